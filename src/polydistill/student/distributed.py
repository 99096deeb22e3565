"""`polydistill run` under torchrun: rank 0 runs the pipeline, every rank trains the models.

    torchrun --nproc-per-node 2 -m polydistill run CONFIG --out DIR

    with run_ranks(cfg, out) as ranks:         # None outside torchrun: one process, as ever
        if ranks is not None and not ranks.main:
            train_beside_rank_zero(ranks)      # waits for rank 0's rows, trains, writes nothing
        else:
            pipeline.run(...)                  # rank 0: the student stage calls
                                               # train_and_score_over_ranks for its models

Rank 0 alone touches the world and the teachers: it builds or reuses the world, evaluates the
teachers, reads them and writes each model's rows folder, exactly as one process does. The other
ranks wait meanwhile (for at most `student.train.distributed.timeout_s`, the process group's
collective timeout), then receive from rank 0 the run's config, the student's source, the
training prompts and the jobs (each with its rows folder), and read the rows themselves.

Every model of the run (the student, then each baseline, in order) is then trained by all ranks
with `train.distributed_loop.train_distributed` (DDP, or FSDP2 with `strategy: fsdp`): each rank
takes its share of every global batch of `student.train.batch_size` rows, so the step is the
one-process step on the same batch. The full weights are gathered to rank 0, which saves the
model to its work folder, scores it on the held-out records and goes on as one process does
(`student/`, metrics, report, lineage). The other ranks write nothing in the output folder;
beside it, in each model's work folder, every rank writes its shards of the DCP checkpoints
(`train.sharded_checkpoint`; resumable at another process count).

Not under torchrun (a one-line error on every rank before anything starts): `ema_decay`,
`validate_every`, `heldout_every` and `on_policy` (the distributed loop has none of them), a
run without a student, and a process count that does not divide every micro-batch.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

from polydistill.config import RunConfig
from polydistill.config.distributed import DistributedConfig
from polydistill.errors import UserError
from polydistill.inputs import StudentSource
from polydistill.progress import console, progress_bars
from polydistill.student.batches import plan_batches
from polydistill.student.loss import IGNORE
from polydistill.student.plans import student_fingerprint
from polydistill.student.prompts import Prompts
from polydistill.student.workers import PlanJob, Stage, export_and_score, load_rows, worker_config
from polydistill.train.distributed import (
    Ranks,
    agree_on_settings,
    current_ranks,
    launched_by_torchrun,
    process_group,
)
from polydistill.train.distributed_loop import collective_failures, train_distributed
from polydistill.train.loop import StepHook
from polydistill.train.reproducible import fixed_threads
from polydistill.train.sharded_checkpoint import full_weights
from polydistill.train.step import Batch, BatchFn, LossFn, LossOutput

TARGET_KEYS = ("target_ids", "target_logprobs", "target_tail", "target_mask")


def check_torchrun_run(cfg: RunConfig, world: int) -> None:
    """UserError unless `world` processes can train this run's models (the config alone)."""
    s = cfg.student
    if s is None:
        raise UserError("a run under torchrun trains a student: the config has no student section")
    refused = {
        "student.train.ema_decay": s.train.ema_decay is not None,
        "student.validate_every": s.validate_every > 0,
        "student.heldout_every": s.heldout_every > 0,
        "student.on_policy": s.on_policy is not None,
    }
    for key, set_ in refused.items():
        if set_:
            raise UserError(f"{key} is not supported under torchrun yet; unset it, or run without")
    rows, buckets = s.train.batch_size, s.train.buckets
    if rows % (world * buckets):
        cut = f" (in {buckets} length buckets)" if buckets > 1 else ""
        raise UserError(
            f"student.train.batch_size {rows}{cut} cannot be split evenly over {world} "
            f"processes; use a batch size that is a multiple of {world * buckets}, or another "
            "process count"
        )


@contextmanager
def run_ranks(cfg: RunConfig, out: Path) -> Iterator[Ranks | None]:
    """Under torchrun: check the config, join the process group and agree with every rank on
    the config and output folder (else a one-line error on each); None outside torchrun."""
    if not launched_by_torchrun():
        yield None
        return
    check_torchrun_run(cfg, int(os.environ["WORLD_SIZE"]))
    with process_group(cfg.student.train.distributed or DistributedConfig()) as ranks:
        with collective_failures(ranks, "starting"):
            agree_on_settings(ranks, {"run": cfg.model_dump(mode="json"), "out": str(out)})
        yield ranks


def train_and_score_over_ranks(cfg: RunConfig, stage: Stage, jobs: list[PlanJob]) -> dict:
    """Rank 0: every job trained by all ranks, then saved and scored here (the contract of
    `workers.train_and_score`); the other ranks are in `train_beside_rank_zero`."""
    ranks = current_ranks()
    if ranks is None or not ranks.main:
        raise RuntimeError("train_and_score_over_ranks runs on rank 0 of a process group")
    # the held-out records stay here: only rank 0 scores
    order = {"run": worker_config(cfg), "stage": replace(stage, heldout={}), "jobs": jobs}
    with collective_failures(ranks, "sending the training rows"):
        dist.broadcast_object_list([order], src=0)
    console.log(f"training {len(jobs)} model(s) on {ranks.world} processes")
    scores: dict[str, dict] = {}
    tokenizer = stage.source.tokenizer()
    with progress_bars() as bars:
        for job in jobs:
            name = job.plan.name
            task = bars.add_task(f"train {name}", total=cfg.student.train.steps, rate="")

            def show(step: int, record: dict, task=task) -> None:
                bars.update(task, completed=step, rate=f"{record['tokens_per_s']:,.0f} tok/s")

            with fixed_threads(cfg.student.train.threads):
                weights = train_job(cfg, stage.source, stage.prompts, job, ranks, show)
                model = stage.source.model(cfg.student.train.seed)
                model.load_state_dict(weights)
                model.eval()
                scores[name] = export_and_score(cfg, stage, job, model, tokenizer)
            console.log(f"{name}: accuracy {scores[name]['accuracy']}")
    return scores


def train_beside_rank_zero(ranks: Ranks) -> None:
    """A rank other than 0: wait for rank 0's training order, then train every job with it."""
    received: list = [None]
    with collective_failures(ranks, "the wait for rank 0's training rows"):
        dist.broadcast_object_list(received, src=0)
    order = received[0]
    cfg = RunConfig.model_validate(order["run"])
    stage: Stage = order["stage"]
    for job in order["jobs"]:
        with fixed_threads(cfg.student.train.threads):
            train_job(cfg, stage.source, stage.prompts, job, ranks)


def train_job(
    cfg: RunConfig,
    source: StudentSource,
    prompts: Prompts,
    job: PlanJob,
    ranks: Ranks,
    on_step: StepHook | None = None,
) -> dict[str, torch.Tensor]:
    """Train one model on every rank from its rows file (resuming from its work folder's DCP
    checkpoints); its full weights on rank 0 (an empty dict elsewhere)."""
    s = cfg.student
    tokenizer = source.tokenizer()
    batches, loss_fn = plan_batches(cfg, job.plan, tokenizer, prompts, load_rows(job))
    if job.plan.sft is None:  # distilled: the targets travel by row, the loss reads them flat
        batches, loss_fn = targets_by_row(batches), flat_targets(loss_fn)
    else:  # fine-tuned (seqkd, the oracle): `sft_loss` reads no targets
        batches = without_targets(batches)
    arguments = s.train.loop_arguments()
    del arguments["ema_decay"]  # refused under torchrun (`check_torchrun_run`)
    _, model = train_distributed(
        # the same weights on every rank (the same seed)
        LossInForward(source.model(s.train.seed), loss_fn),
        batches,
        lambda wrapped, batch: LossOutput(*wrapped(batch)),
        ranks=ranks,
        strategy=(s.train.distributed or DistributedConfig()).strategy,
        **arguments,
        run_dir=job.work,
        checkpoint_every=s.checkpoint_every,
        resume=s.checkpoint_every > 0,
        fingerprint=student_fingerprint(cfg, source.identity, job.plan),
        on_step=on_step if ranks.main else None,
    )
    with collective_failures(ranks, f"gathering {job.plan.name}'s weights"):
        weights = full_weights(model)
    return {name.removeprefix("model."): tensor for name, tensor in weights.items()}


class LossInForward(torch.nn.Module):
    """The student with its loss as its forward. DDP synchronises, and FSDP2 gathers, the
    parameters a forward *through the wrapper* uses; the fused distillation loss reaches past
    the model's own forward (to the decoder's hidden states and the lm_head weight), so the
    wrapper must wrap the loss itself. Weights keep their names under `model.`."""

    def __init__(self, model: torch.nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        # FSDP2 shards each decoder layer as its own unit (`train.distributed.wrap_model`)
        self._no_split_modules = getattr(model, "_no_split_modules", None)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def forward(self, batch: Batch) -> LossOutput:
        return self.loss_fn(self.model, batch)


def targets_by_row(batch_at: BatchFn) -> BatchFn:
    """`batch_at` whose flat targets (one per answer position, row after row: what
    `batches.distillation_batches` gives and `loss.distillation_loss` reads) are padded into
    `[rows, most positions, ...]` with `target_rows` (each row's count), so that every tensor of
    a batch has its rows first and `train.distributed.rank_share` can split it by rows."""

    def at(index: int) -> Batch:
        batch = dict(batch_at(index))
        counts = (batch["labels"][:, 1:] != IGNORE).sum(1)
        if int(counts.sum()) != batch["target_ids"].shape[0]:
            raise ValueError("a batch's targets are not one per answer position")
        most = int(counts.max()) if len(counts) else 0
        kept = torch.arange(most) < counts[:, None]
        for key in TARGET_KEYS:
            flat = batch[key]
            padded = flat.new_zeros((len(counts), most, *flat.shape[1:]))
            padded[kept] = flat  # row-major: row r's positions in order
            batch[key] = padded
        batch["target_rows"] = counts
        return batch

    return at


def flat_targets(loss_fn: LossFn) -> LossFn:
    """`loss_fn` for the batches of `targets_by_row`: the targets flat again, as they were."""

    def loss(model: torch.nn.Module, batch: Batch) -> LossOutput:
        batch = dict(batch)
        counts = batch.pop("target_rows")
        kept = torch.arange(batch["target_ids"].shape[1], device=counts.device) < counts[:, None]
        return loss_fn(model, {**batch, **{key: batch[key][kept] for key in TARGET_KEYS}})

    return loss


def without_targets(batch_at: BatchFn) -> BatchFn:
    """`batch_at` without its (flat, unused by `sft_loss`) distillation targets."""
    return lambda index: {k: v for k, v in batch_at(index).items() if k not in TARGET_KEYS}
