"""The `teachers:` list: each teacher a world teacher, a real local checkpoint (`path`) or a
model behind OpenAI-compatible servers (`served`), with what the config declares about its
licence.

    teachers:
      - {name: gemma, family: gemma, path: models/gemma-3-270m.gguf, template: gemma}
      - {name: qwen, family: qwen, served: {tokenizer: tok/qwen3, urls: [http://gpu1:8000]}}

Read by `teachers.from_config` (a `Teacher` for each) and `lineage.facts` (licences).
"""

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from polydistill.config.fields import (
    Domain,
    Family,
    LaxPath,
    Strict,
    TokenizerStyle,
    gguf_file_or_folder,
)
from polydistill.config.served import ServedConfig
from polydistill.config.training import ModelSize, TrainConfig


class TeacherLicence(Strict):
    """What the config declares about a teacher's licence and origin; it overrides what the
    checkpoint's files and the built-in tables say (`polydistill.lineage.facts`). A licence id
    not in the table needs `url` and `commercial`."""

    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.+-]*$")] | None = None
    """A known licence id (`polydistill.lineage.licences.LICENCES`, e.g. apache-2.0, gemma,
    llama3.1, qwen, qwen-research), or a new one described by the fields below."""
    name: str | None = None
    """The licence's full name."""
    url: str | None = None
    """The URL of the licence's text."""
    commercial: bool | None = None
    """False where the licence forbids commercial use."""
    commercial_limit: str | None = None
    """A limit on commercial use where the licence allows it (e.g. a user count)."""
    notice: str | None = None
    """The notice a distilled model must ship."""
    naming: str | None = None
    """The naming rule for a distilled model (e.g. a required name prefix)."""
    use_restrictions: str | None = None
    """A use policy (URL) whose restrictions pass on to the distilled model's users."""
    publisher: str | None = None
    """Who publishes the weights."""
    origin: Annotated[str, Field(pattern=r"^[A-Z]{2}$")] | None = None
    """The publisher's jurisdiction (ISO 3166-1 alpha-2, e.g. US, CN)."""


class TeacherConfig(Strict):
    """A world teacher (family + domains + sizes), a real local checkpoint (`path`) or a model
    behind OpenAI-compatible servers (`served`): exactly one of the three."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    """The teacher's name in the run: `student.teachers`, `metrics.json` (`teacher:<name>`),
    the lineage."""
    family: Family
    """`gemma`, `qwen` or `gpt-oss`: a world teacher's architecture and tokenizer style; for a
    checkpoint or a served model, the family its licence facts default to."""
    domains: list[Domain] = Field(default_factory=list)
    """The skills a world teacher is trained on (a world teacher needs at least one)."""
    path: LaxPath | None = None
    """A real local checkpoint instead of a world teacher: a Hugging Face folder (config.json,
    safetensors, tokenizer) or a GGUF file (dequantised on loading; needs the `gguf` package)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """The dtype a checkpoint is loaded and run in (bfloat16 halves memory, also on CPU)."""
    template: str | None = None
    """A chat template for a checkpoint (or a served model's tokenizer) that has none, or to
    replace its own: a Jinja file, or a built-in (`gemma`, `chatml`; `teachers.templates`);
    `completion` (as a checkpoint without a template) makes it a completion model: prompts as
    plain text, answers their continuations (recorded as `chat_template: completion` in its
    fingerprint)."""
    tokenizer: TokenizerStyle | None = None
    """A world teacher's tokenizer style; unset: its family's own (`student` lets a teacher
    share the student's tokenizer, so that no alignment is needed)."""
    model: ModelSize = ModelSize()
    """A world teacher's sizes."""
    train: TrainConfig = TrainConfig()
    """A world teacher's training (it also stops at `world.target_accuracy`)."""
    licence: TeacherLicence | None = None
    """What the config declares about the teacher's licence and origin."""
    served: ServedConfig | None = None
    """A model behind OpenAI-compatible servers (vLLM) instead of a world teacher or `path`."""

    @field_validator("path")
    @classmethod
    def _is_checkpoint(cls, path: Path | None) -> Path | None:
        if path is None or gguf_file_or_folder(path):
            return path
        if not (path / "config.json").is_file():
            raise ValueError(f"not a Hugging Face checkpoint (no config.json): {path}")
        return path

    @model_validator(mode="after")
    def _world_teacher_has_domains(self) -> "TeacherConfig":
        if self.path is not None and self.served is not None:
            raise ValueError(
                f"teacher {self.name!r}: a checkpoint (path) or servers (served), not both"
            )
        if self.kind == "world" and not self.domains:
            raise ValueError(
                f"world teacher {self.name!r} needs domains (or a checkpoint path, or served)"
            )
        if self.kind != "world" and self.tokenizer is not None:
            raise ValueError(
                f"teacher {self.name!r}: a checkpoint (path) or a served model brings its own "
                "tokenizer"
            )
        if self.kind == "world" and (self.template is not None or self.dtype != "float32"):
            raise ValueError(
                f"world teacher {self.name!r}: template and dtype are for checkpoints (path)"
            )
        if self.kind == "served" and self.dtype != "float32":
            raise ValueError(f"teacher {self.name!r}: dtype is the server's to choose (served)")
        return self

    @property
    def kind(self) -> Literal["world", "path", "served"]:
        """Where the teacher comes from: trained in the world, a checkpoint, or servers."""
        if self.path is not None:
            return "path"
        return "served" if self.served is not None else "world"

    @property
    def tokenizer_style(self) -> str | None:
        """The world tokenizer style of a world teacher (family names are style names)."""
        return self.tokenizer or self.family if self.kind == "world" else None
