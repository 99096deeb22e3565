"""The specialists world as a run's inputs: teacher checkpoints, the student's source, prompts.

    inputs = run_inputs(cfg)            # the world built (or reused) only where it is needed
    pipeline.run(cfg, out, inputs)

The world sits above the pipeline: `cli` resolves it into plain inputs (paths and records) and
nothing below (`config`, `student`, `pipeline`) imports it. World teachers become their trained
checkpoints; a teacher with a `path` stays its own checkpoint. The student is, by default, a
fresh `student.family` architecture of `student.model` sizes on the world's `student.tokenizer`
style (`WorldStudent`), or `student.init`'s checkpoint. With `data: {source: world}` the prompts
are the world's examples (tag = domain, held-out = test split, `world.prompts`); otherwise the
user's files (`data:`). A run or capture that needs nothing of the world (`uses_world`:
checkpoint or served teachers, prompt files, `student.init`) never builds it: `run_inputs` gives
it `pipeline.file_inputs`.
"""

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from polydistill.config import Family, ModelSize, RunConfig, WorldData
from polydistill.data import ContextLimit, DataSummary, PromptRecord
from polydistill.inputs import FilePrompts, PromptSource, RunInputs
from polydistill.pipeline import file_inputs, init_about
from polydistill.student.init import CheckpointStudent
from polydistill.world.architectures import build_model
from polydistill.world.build import World, build_world
from polydistill.world.domains import Splits
from polydistill.world.prompts import world_prompts


@dataclass(frozen=True)
class WorldStudent:
    """A fresh world architecture on a world tokenizer: the default `StudentSource`."""

    family: Family
    sizes: ModelSize
    tokenizer_dir: Path
    identity: str
    """The world's folder name: the student's fingerprint changes with the world."""

    def tokenizer(self) -> PreTrainedTokenizerBase:
        return AutoTokenizer.from_pretrained(self.tokenizer_dir)

    def model(self, seed: int) -> PreTrainedModel:
        return build_model(self.family, self.sizes, self.tokenizer(), seed)

    def max_positions(self) -> int:
        return self.sizes.max_positions


@dataclass(frozen=True)
class WorldPrompts:
    """The world's examples of every domain as prompt records (already short: no limits)."""

    world: World

    def records(
        self, limits: Mapping[str, ContextLimit], summary: DataSummary
    ) -> Iterator[PromptRecord]:
        splits = {
            domain: Splits(train, self.world.heldout[domain], self.world.validation[domain])
            for domain, train in self.world.train.items()
        }
        for record in world_prompts(splits):
            summary.rows += 1
            summary.kept[record.split] += 1
            summary.tags[record.split, record.tag] += 1
            summary.layouts[record.layout] += 1
            yield record


def world_student(cfg: RunConfig, world: World) -> WorldStudent:
    s = cfg.student
    if s is None:  # no student to train: only its tokenizer is read (for context limits)
        return WorldStudent("qwen", ModelSize(), world.tokenizer_dir("student"), world.root.name)
    return WorldStudent(s.family, s.model, world.tokenizer_dir(s.tokenizer), world.root.name)


def uses_world(cfg: RunConfig) -> bool:
    """Whether the run needs the world: a world teacher, world prompts, or a world-style student
    (also for a run without a student, whose context limits read the world's student tokenizer)."""
    return (
        any(t.kind == "world" for t in cfg.teachers)
        or isinstance(cfg.data, WorldData)
        or cfg.student is None
        or cfg.student.init is None
    )


def run_inputs(cfg: RunConfig) -> RunInputs:
    """The inputs of a run (or of a capture of its readings): from the world where the config
    needs it (`uses_world`), else from the user's files and checkpoints alone."""
    return world_inputs(cfg) if uses_world(cfg) else file_inputs(cfg)


def world_inputs(cfg: RunConfig) -> RunInputs:
    """Build (or reuse) the world and resolve the run's inputs from it."""
    world = build_world(cfg)
    prompts: PromptSource = (
        WorldPrompts(world) if isinstance(cfg.data, WorldData) else FilePrompts(cfg.data)
    )
    return RunInputs(
        teachers={
            t.name: t.path or world.teachers[t.name] for t in cfg.teachers if t.kind != "served"
        },
        student=(
            CheckpointStudent(cfg.student.init)
            if cfg.student is not None and cfg.student.init is not None
            else world_student(cfg, world)
        ),
        prompts=prompts,
        about={"world": str(world.root.resolve())}
        | (init_about(cfg.student.init) if cfg.student and cfg.student.init else {}),
    )
