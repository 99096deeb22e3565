"""What a run learns from, as plain values: teacher checkpoints, the student's source, prompts.

    inputs = RunInputs(
        teachers={"qwen": Path("ckpt/qwen"), "gemma": Path("ckpt/gemma")},
        student=my_student_source,                  # a `StudentSource`
        prompts=FilePrompts(cfg.data),              # or any `PromptSource`
    )
    pipeline.run(cfg, out, inputs)

The pipeline and the student stage see only these: checkpoint folders, a student source and a
stream of `PromptRecord`s. Where they come from (the user's files, the specialists world, a
teacher's pruned layers) is decided above the pipeline (`polydistill.world.inputs` for the
world; `cli` picks). A source must be picklable: the student stage hands it to worker processes.
"""

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from polydistill.data import ContextLimit, DataConfig, DataSummary, PromptRecord, read_prompts


class StudentSource(Protocol):
    """Where the student's untrained model and its tokenizer come from: the one boundary a
    student initialisation (a checkpoint, a pruned teacher, a world architecture) fills."""

    @property
    def identity(self) -> str:
        """A short stable name of the source: part of each trained model's fingerprint."""
        ...

    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The student's tokenizer, with its chat template."""
        ...

    def model(self, seed: int) -> PreTrainedModel:
        """The student before training (`seed` draws a fresh initialisation's weights)."""
        ...

    def max_positions(self) -> int:
        """The most tokens (prompt and answer) the student reads."""
        ...


class PromptSource(Protocol):
    """A re-readable stream of prompt records of every split."""

    def records(
        self, limits: Mapping[str, ContextLimit], summary: DataSummary
    ) -> Iterator[PromptRecord]:
        """Every kept record; prompts over a model's `limits` are dropped and counted."""
        ...


@dataclass(frozen=True)
class FilePrompts:
    """The user's prompt files (`data:` of the run config)."""

    config: DataConfig

    def records(
        self, limits: Mapping[str, ContextLimit], summary: DataSummary
    ) -> Iterator[PromptRecord]:
        return read_prompts(self.config, limits, summary)


@dataclass(frozen=True)
class RunInputs:
    """Everything a run reads besides its config."""

    teachers: Mapping[str, Path]
    """Each local teacher's checkpoint (a Hugging Face folder or a GGUF file), by name; a served
    teacher (`teachers[].served`) has none: it is built from its config."""
    student: StudentSource
    prompts: PromptSource
    about: Mapping[str, str] = field(default_factory=dict)
    """Where the inputs came from, written to the run's `inputs.json` (e.g. the world's root)."""
