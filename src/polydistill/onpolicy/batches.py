"""On-policy and mixed batches for `train.train`: a buffer of the student's graded samples.

    warm_start(student, Path("runs/x/student/checkpoints/step-00000200"))
    batch_at = on_policy_batches(student, tokenizer, teachers, prompts, config,
                                 grading=Grading("evidence"), batch_size=8,
                                 accumulation_steps=1, off_policy=distillation_batches(...))
    train(student, batch_at, distillation_loss("reverse_kl", ...), steps=..., lr=...,
          accumulation_steps=1)

Steps. Optimiser step s (micro-batch i is step i // accumulation_steps) is on-policy when
floor((s + 1) * mix) > floor(s * mix), so a fraction `mix` of the steps, spread evenly and the
same in every run; the others take the off-policy micro-batches in order (the n-th off-policy
step gets `off_policy`'s micro-batches of its n-th step, so that stream is consumed without gaps).

Buffer. Steps fall in blocks of `buffer_steps`. At the first on-policy micro-batch of a block the
student (its current weights) samples `samples_per_prompt` answers to `buffer_prompts` prompts
(the next ones of a seeded shuffled stream of all prompts), every teacher grades them
(`targets.graded_rows`), and the block's on-policy steps walk through those rows in shuffled
passes (`distill.distillation_batches`, seeded by the block). So generation and teacher calls
happen once per block, and the rows are reused `buffer_steps` times at most.

Resume. `batch_at` depends on the weights at each block's first on-policy step. With
`buffer_dir`, every block's rows are saved there (written whole, then renamed) and read back
when the block is asked for again, so a run resumed inside a block trains on exactly the rows
the killed run had; without it, a resume inside a block regenerates from the resumed weights.
"""

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from transformers import PreTrainedModel
from transformers import PreTrainedTokenizerBase as Tokenizer

from polydistill.chat import shuffled_stream
from polydistill.distill import distillation_batches
from polydistill.errors import UserError
from polydistill.onpolicy.config import OnPolicyConfig
from polydistill.onpolicy.sampling import sample_answers
from polydistill.onpolicy.targets import Grading, graded_rows
from polydistill.student_targets import DistillationData
from polydistill.teachers.protocol import Teacher
from polydistill.train import Batch, BatchFn
from polydistill.train.checkpoint import load_weights

Refreshed = Callable[[int, dict], None]
"""(block, stats of `graded_rows`): called when a block's buffer is generated or read back."""


def on_policy_steps_before(step: int, mix: float) -> int:
    """On-policy steps among steps 0..step-1."""
    return math.floor(step * mix)


def is_on_policy(step: int, mix: float) -> bool:
    return on_policy_steps_before(step + 1, mix) > on_policy_steps_before(step, mix)


def warm_start(model: PreTrainedModel, folder: Path) -> None:
    """Load the student's weights from a checkpoint folder (`train`'s `step-*` or a saved
    student), exactly; a folder without weights or for another model is a `UserError`."""
    folder = Path(folder)
    has_weights = (folder / "model.safetensors").is_file() or (
        folder / "model.safetensors.index.json"
    ).is_file()
    if not has_weights:
        raise UserError(f"on_policy.warm_start: {folder} holds no model.safetensors")
    load_weights(folder, model)


class _Buffer:
    """The current block's rows and their batches; generated, or read back from `folder`."""

    def __init__(self, make: Callable[[int], tuple[DistillationData, dict]], folder: Path | None):
        self.make, self.folder = make, folder
        self.block, self.batches = -1, None

    def batches_of(self, block: int, batch_for: Callable[[DistillationData, int], BatchFn]):
        if block != self.block:
            data = self._rows(block)
            self.block, self.batches = block, batch_for(data, block)
        return self.batches

    def _rows(self, block: int) -> DistillationData:
        path = self.folder / f"buffer-{block:06d}.pt" if self.folder else None
        if path is not None and path.is_file():
            return torch.load(path, weights_only=False)["rows"]
        data, stats = self.make(block)
        if path is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".tmp-{path.name}")
            torch.save({"rows": data, "stats": stats}, partial)
            os.replace(partial, path)
        return data


def on_policy_batches(
    model: PreTrainedModel,
    tokenizer: Tokenizer,
    teachers: Sequence[Teacher],
    prompts: Sequence[str],
    config: OnPolicyConfig,
    *,
    grading: Grading,
    batch_size: int,
    accumulation_steps: int = 1,
    off_policy: BatchFn | None = None,
    domains: Sequence[str] | None = None,
    buffer_dir: Path | None = None,
    on_refresh: Refreshed | None = None,
) -> BatchFn:
    """`batch_at(i)` for `train.train` (same `accumulation_steps`); see the module.
    `batch_size`: rows per micro-batch of the on-policy steps."""
    if config.mix < 1.0 and off_policy is None:
        raise UserError(f"on_policy.mix is {config.mix}: the other steps need off-policy batches")
    if not prompts:
        raise UserError("on-policy distillation has no prompts to sample")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompt_at = shuffled_stream(len(prompts), config.seed)

    def make(block: int) -> tuple[DistillationData, dict]:
        ids = [prompt_at(block * config.buffer_prompts + j) for j in range(config.buffer_prompts)]
        drawn = sample_answers(
            model, tokenizer, [prompts[i] for i in ids], prompt_ids=ids,
            samples=config.samples_per_prompt, temperature=config.temperature,
            max_new_tokens=config.max_new_tokens, seed=config.seed, refresh=block,
            batch_size=config.generation_batch_size,
        )  # fmt: skip
        asked = [prompts[i] for i in ids]
        data, stats = graded_rows(
            drawn, teachers, tokenizer, asked, grading, top_k=config.top_k,
            domains=None if domains is None else [domains[i] for i in ids],
        )  # fmt: skip
        data = DistillationData(
            data.prompts, data.completions, data.targets, data.offsets,
            [ids[p] for p in data.prompt_of],
        )  # fmt: skip
        if on_refresh:
            on_refresh(block, stats)
        return data, stats

    buffer = _Buffer(make, buffer_dir)

    def batch_for(data: DistillationData, block: int) -> BatchFn:
        return distillation_batches(data, pad, batch_size, seed=config.seed * 1_000_003 + block)

    def batch_at(index: int) -> Batch:
        step, micro = divmod(index, accumulation_steps)
        before = on_policy_steps_before(step, config.mix)
        if not is_on_policy(step, config.mix):
            return off_policy((step - before) * accumulation_steps + micro)
        block = step // config.buffer_steps
        first = on_policy_steps_before(block * config.buffer_steps, config.mix)
        batches = buffer.batches_of(block, batch_for)
        return batches((before - first) * accumulation_steps + micro)

    return batch_at
