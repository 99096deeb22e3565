"""`student.init`: where the student's first weights come from (read by `student.init`).

    student:
      init: {checkpoint: models/qwen3-0.6b}      # a Hugging Face folder (or a GGUF file)
      init: {prune: {teacher_path: gemma-3-270m.gguf, keep: 6}, template: gemma}
      init: {config: configs/small.json, tokenizer: tokenizers/qwen3}   # random init, seeded

No `init` is the world-style student (`student.family`, `student.model`, `student.tokenizer`).
"""

from typing import Annotated

from pydantic import Field, model_validator

from polydistill.config.fields import LaxPath, Strict


class Prune(Strict):
    """A depth-pruned copy of a teacher: which checkpoint, which decoder layers."""

    teacher_path: LaxPath
    """The teacher: a Hugging Face folder or a GGUF file."""
    layers: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] | None = None
    """The decoder layers kept, 0-based; kept in increasing order."""
    keep: Annotated[int, Field(ge=2)] | None = None
    """How many decoder layers to keep, evenly spaced; the first and last are always kept."""

    @model_validator(mode="after")
    def _one_choice(self) -> "Prune":
        if (self.layers is None) == (self.keep is None):
            raise ValueError("give exactly one of layers (indices) or keep (a count)")
        if self.layers is not None and len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers lists a layer twice: {self.layers}")
        return self


class StudentInit(Strict):
    """How the student starts: exactly one of `checkpoint`, `prune` or `config` (with
    `tokenizer`); no `init` at all is the world-style student."""

    checkpoint: LaxPath | None = None
    """A checkpoint to start from, pretrained or instruct: a Hugging Face folder (config.json,
    safetensors weights, a fast tokenizer and its chat template) or a GGUF file."""
    prune: Prune | None = None
    """A teacher to start from with only some of its decoder layers."""
    config: LaxPath | None = None
    """A transformers config.json (or a folder holding one): random weights, seeded by the
    run's seed, sized for `tokenizer`."""
    tokenizer: LaxPath | None = None
    """With `config`: a folder with a fast tokenizer (tokenizer.json) and its chat template."""
    template: str | None = None
    """A chat template for a tokenizer without one (a Jinja file or a built-in: gemma,
    chatml); without either the student is completion-style."""

    @model_validator(mode="after")
    def _one_start(self) -> "StudentInit":
        chosen = [k for k in ("checkpoint", "prune", "config") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError("give exactly one of checkpoint, prune or config (+ tokenizer)")
        if (self.config is None) != (self.tokenizer is None):
            raise ValueError("tokenizer goes with config, and config needs one")
        return self
