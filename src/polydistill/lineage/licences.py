"""What each known licence asks of a model distilled from a teacher under it, and who publishes
each known family. The tables are facts read from the licences' texts (summarised, with the
URL of the full text); a teacher's own checkpoint or the run config may say otherwise, and wins.

Obligations a licence puts on a distilled model:
- `notice`: a notice to ship with the model (the `NOTICE` text a run assembles);
- `naming`: a rule for the model's name (e.g. Llama's "Llama" prefix);
- `use_restrictions`: a use policy whose restrictions must be passed on to the model's users;
- `commercial`: False where the licence forbids commercial use; `commercial_limit` states a
  limit that applies (e.g. monthly active users) where it allows it.
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Licence:
    id: str  # lower-case identifier, SPDX where one exists
    name: str
    url: str
    commercial: bool = True
    commercial_limit: str | None = None
    notice: str | None = None
    naming: str | None = None
    use_restrictions: str | None = None  # URL of the use policy to pass on
    # Phrases that all stand in a LICENSE / NOTICE file of this licence (case-insensitive).
    markers: tuple[str, ...] = field(default=(), compare=False)

    @property
    def obligations(self) -> list[str]:
        """The obligations this licence puts on a distilled model, by kind."""
        kinds = {"notice": self.notice, "naming": self.naming}
        kinds["use_restrictions"] = self.use_restrictions
        return [kind for kind, value in kinds.items() if value]


GEMMA_NOTICE = (
    "Gemma is provided under and subject to the Gemma Terms of Use found at "
    "ai.google.dev/gemma/terms"
)

LICENCES: dict[str, Licence] = {
    licence.id: licence
    for licence in (
        Licence(
            "apache-2.0",
            "Apache License 2.0",
            "https://www.apache.org/licenses/LICENSE-2.0",
            markers=("apache license", "version 2.0"),
        ),
        Licence(
            "mit", "MIT License", "https://opensource.org/license/mit", markers=("mit license",)
        ),
        Licence(
            "gemma",
            "Gemma Terms of Use",
            "https://ai.google.dev/gemma/terms",
            # §1.1(e): a model trained on Gemma's outputs by distillation is a Model Derivative;
            # offering it through an API is Distribution (§1.1(b)), which carries §3.1's duties.
            notice=GEMMA_NOTICE,
            use_restrictions="https://ai.google.dev/gemma/prohibited_use_policy",
            markers=("gemma terms of use",),
        ),
        Licence(
            "llama3.1",
            "Llama 3.1 Community License Agreement",
            "https://www.llama.com/llama3_1/license/",
            commercial_limit="a licence from Meta above 700 million monthly active users",
            notice="Built with Llama",
            naming='the model\'s name begins with "Llama"',
            use_restrictions="https://www.llama.com/llama3_1/use-policy/",
            markers=("llama 3.1 community license",),
        ),
        Licence(
            "qwen",
            "Tongyi Qianwen License Agreement",
            "https://huggingface.co/Qwen/Qwen2.5-72B-Instruct/blob/main/LICENSE",
            commercial_limit="a licence from Alibaba Cloud above 100 million monthly active users",
            notice="Built with Qwen",
            markers=("tongyi qianwen license agreement",),
        ),
        Licence(
            "qwen-research",
            "Qwen Research License Agreement",
            "https://huggingface.co/Qwen/Qwen2.5-3B-Instruct/blob/main/LICENSE",
            commercial=False,
            notice="Built with Qwen",
            markers=("qwen research license agreement",),
        ),
        Licence(
            "cc-by-nc-4.0",
            "Creative Commons Attribution-NonCommercial 4.0",
            "https://creativecommons.org/licenses/by-nc/4.0/",
            commercial=False,
            notice="Attribution as the licence requires",
            markers=("attribution-noncommercial 4.0",),
        ),
    )
}

# Spellings seen in model cards' `license:` field for the ids above.
ALIASES = {
    "apache 2.0": "apache-2.0",
    "apache2": "apache-2.0",
    "llama3_1": "llama3.1",
    "tongyi-qianwen": "qwen",
    "qwen-research-license": "qwen-research",
}


@dataclass(frozen=True)
class Publisher:
    name: str
    origin: str  # ISO 3166-1 alpha-2 code of the publisher's jurisdiction


# Who publishes each family's open weights, and the licence of its current releases (gemma's
# terms; gpt-oss and Qwen3 under Apache-2.0). A world teacher stands in for its family and
# carries these facts; a real checkpoint's licence must come from the checkpoint or the config.
FAMILIES: dict[str, tuple[Publisher, str]] = {
    "gemma": (Publisher("Google LLC", "US"), "gemma"),
    "gpt-oss": (Publisher("OpenAI", "US"), "apache-2.0"),
    "qwen": (Publisher("Alibaba Cloud", "CN"), "apache-2.0"),
}


def licence_id(text: str) -> str | None:
    """The known licence a model card's `license:` value names, or None."""
    key = text.strip().lower()
    key = ALIASES.get(key, key)
    return key if key in LICENCES else None


def licences_in_text(text: str) -> set[str]:
    """The known licences a LICENSE / NOTICE file's text names (every marker present)."""
    lowered = " ".join(text.lower().split())
    return {
        licence.id
        for licence in LICENCES.values()
        if licence.markers and all(marker in lowered for marker in licence.markers)
    }
