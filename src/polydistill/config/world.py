"""The `world:` section (the specialists world: its domains, tokenizer sizes and how its
teachers train) and `data: {source: world}`, the world's examples as a run's prompts.

    world:
      seed: 0
      domains: {arithmetic: {max_digits: 2}, facts: {entities: 40}}

Read by `polydistill.world` alone: the product path takes the world through `RunInputs`.
"""

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from polydistill.config.fields import LaxPath, Positive, Strict

Digits = Annotated[int, Field(ge=1, le=6)]


class ArithmeticConfig(Strict):
    """Addition: `347+58` → `405`."""

    train: Positive = 20000
    """Training problems."""
    heldout: Positive = 200
    """Held-out problems, where every model is scored (never trained on, never used to stop)."""
    validation: Positive = 200
    """Validation problems, where a world teacher decides it is done."""
    max_digits: Digits = 3
    """Most digits of the first operand (and of the second, unless `max_digits_second`)."""
    min_digits: Digits = 1
    """Fewest digits of either operand."""
    max_digits_second: Digits | None = None
    """Most digits of the second operand; unset: `max_digits`."""

    @model_validator(mode="after")
    def _digits(self) -> "ArithmeticConfig":
        if self.min_digits > self.max_digits:
            raise ValueError(f"min_digits {self.min_digits} is above max_digits {self.max_digits}")
        return self


class FactsConfig(Strict):
    """Facts about invented people: `Where does Tomuqa Ruza live?` → a city."""

    entities: Positive = 40
    """Invented people, each with a city, a job and a pet; each fact is asked in training
    through two of four phrasings, held out through a third and validated through the fourth
    (drawn per fact)."""


class StringsConfig(Strict):
    """String reversal: `reverse: kfzq` → `qzfk`."""

    train: Positive = 20000
    """Training strings."""
    heldout: Positive = 200
    """Held-out strings, where every model is scored."""
    validation: Positive = 200
    """Validation strings, where a world teacher decides it is done."""
    min_len: Positive = 3
    """Shortest string."""
    max_len: Positive = 7
    """Longest string."""
    alphabet: Annotated[str, Field(min_length=2)] = "abcdefghijklmnopqrstuvwxyz"
    """The letters strings are drawn from."""

    @model_validator(mode="after")
    def _lengths(self) -> "StringsConfig":
        if self.min_len > self.max_len:
            raise ValueError(f"min_len {self.min_len} is above max_len {self.max_len}")
        return self


class DomainsConfig(Strict):
    """The world's skills: each world teacher trains on some of them."""

    arithmetic: ArithmeticConfig = ArithmeticConfig()
    """Addition problems."""
    facts: FactsConfig = FactsConfig()
    """Facts about invented people."""
    strings: StringsConfig = StringsConfig()
    """String reversal."""


class VocabSizes(Strict):
    """Vocabulary size of each world tokenizer style."""

    gemma: Positive = 1024
    """Gemma style: SentencePiece-style BPE, spaces as `▁`, byte fallback, single digits."""
    qwen: Positive = 1024
    """Qwen style: byte-level BPE with Qwen's pre-tokenizer (one digit per token)."""
    gpt_oss: Positive = 2304
    """gpt-oss style: byte-level BPE with the o200k pre-tokenizer; includes all 1,110 digit
    groups of up to three digits."""
    student: Positive = 1024
    """The student's style: a SentencePiece-style unigram model, unlike every teacher's."""

    def of(self, style: str) -> int:
        return getattr(self, style.replace("-", "_"))


class WorldConfig(Strict):
    """The specialists world: tiny teachers of the real architectures, each trained on some of
    the domains with its family's tokenizer style."""

    seed: int = 0
    """Seed of every generator in the world."""
    cache_dir: LaxPath = Path(".cache/polydistill/worlds")
    """Where built worlds are cached, keyed by a hash of the world config."""
    domains: DomainsConfig = DomainsConfig()
    """The domains' sizes."""
    vocab: VocabSizes = VocabSizes()
    """The tokenizers' vocabulary sizes."""
    eval_every: Positive = 100
    """Steps between validation checks while a world teacher trains; it stops at
    `target_accuracy` on validation, so held-out (where every model is scored) never picks a
    teacher."""
    target_accuracy: Annotated[float, Field(ge=0, le=1)] = 0.97
    """A world teacher stops once it reaches this accuracy on each of its domains."""
    prompt_loss_weight: Annotated[float, Field(ge=0, le=1)] = 0.02
    """World teachers also learn their prompts, at this weight per token relative to an answer
    token (0: answers only): real teachers are language models of all their text, prompts
    included, so how well a teacher models a prompt says where it is at home (the evidence
    router reads it)."""


class WorldData(Strict):
    """The specialists world's examples as the prompts: tag = domain, held-out = test split."""

    source: Literal["world"]
    """`world`: the world's examples, tag = domain, held-out = test split."""
