"""`polydistill capture`: capture the run's teachers into a store, or merge a sharded capture.

    polydistill capture examples/specialists.yaml --out store [key=value ...]
    polydistill capture CONFIG --out store --shard 0/4     # four workers, one folder
    polydistill capture --merge --out store                # after they all finish
    torchrun --nproc-per-node 4 -m polydistill capture CONFIG --out store   # the same, at once

The prompts and teachers are the student's (`student.prompts.prompt_sets`,
`student.readings.student_teachers`: the training prompts of its tags, its teachers in their
order, world teachers from the built or cached world, `world.inputs`), and top_k,
temperature, answers per prompt, sampling seed and `eval.max_new_tokens` come from the
config's `student:` and `eval:` sections.

Under torchrun each process captures its own share, as `--shard RANK/WORLD_SIZE` would
(`capture_over_ranks`): rank 0 builds or reads the world first, so that the processes do not
build it side by side, and whichever process finishes last writes the manifest.
"""

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from polydistill.errors import UserError

if TYPE_CHECKING:
    from polydistill.config import RunConfig


def capture_from_config(
    cfg: "RunConfig", out: Path, shard: tuple[int, int], block_size: int
) -> bool:
    """Capture the config's teachers on the student's prompts; True when the store is complete."""
    from polydistill.data import DataSummary
    from polydistill.lineage.policy import run_gate
    from polydistill.pipeline import context_limits
    from polydistill.store.capture import capture_store
    from polydistill.student.prompts import prompt_sets
    from polydistill.student.readings import student_teachers
    from polydistill.world.inputs import run_inputs

    student = cfg.student
    if student is None:
        raise UserError(
            "capture: the config has no student: section (it names the teachers, and whose "
            "prompts, top_k, temperature and answers per prompt to capture)"
        )
    gate = run_gate(cfg)  # before any teacher is loaded or called
    cfg, policy = gate.config, gate.policy and gate.policy.digest
    inputs = run_inputs(cfg)  # the world only where the config names it
    # The run's own context limits: the store holds exactly the prompts that the run reading it
    # trains on (it checks their hash), none too long for a teacher or the student.
    limits = context_limits(cfg, inputs, frozenset(gate.excluded))
    prompts = prompt_sets(cfg, inputs.prompts.records(limits, DataSummary())).train
    return capture_store(
        student_teachers(cfg, inputs.teachers, policy),
        prompts.texts,
        out,
        top_k=student.top_k,
        temperature=student.temperature,
        samples=student.completions_per_prompt,
        max_new_tokens=cfg.eval.max_new_tokens,
        seed=student.train.seed,
        block_size=block_size,
        shard=shard,
        policy=policy,
    )


def capture_over_ranks(cfg: "RunConfig", out: Path, block_size: int) -> bool:
    """Under torchrun: this process captures the blocks b % WORLD_SIZE == RANK; True when the
    store is complete (the last process to finish writes the manifest). Every process must be
    given the same config, store and block size (else a one-line error on each)."""
    import torch.distributed as dist

    from polydistill.config import DistributedConfig
    from polydistill.train.distributed import agree_on_settings, process_group
    from polydistill.train.distributed_loop import collective_failures
    from polydistill.world.inputs import run_inputs

    if cfg.student is None:
        return capture_from_config(cfg, out, (0, 1), block_size)  # its one-line error
    settings = {"capture": cfg.model_dump(mode="json"), "out": str(out), "block": block_size}
    with process_group(cfg.student.train.distributed or DistributedConfig()) as ranks:
        with collective_failures(ranks, "starting the capture"):
            agree_on_settings(ranks, settings)
            failure = [None]
            if ranks.main:  # any world once, before the others read it from the cache
                try:
                    run_inputs(cfg)
                except UserError as error:
                    failure = [str(error)]
            dist.broadcast_object_list(failure, src=0)
        if failure[0] is not None:
            raise UserError(failure[0])
        return capture_from_config(cfg, out, (ranks.rank, ranks.world), block_size)


def register(app: typer.Typer) -> None:
    """Add the `capture` command to the CLI."""

    @app.command()
    def capture(
        config: Annotated[Path | None, typer.Argument(help="Run configuration (YAML).")] = None,
        overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides.")] = None,
        out: Annotated[Path, typer.Option("--out", help="Store folder.")] = Path("store"),
        shard: Annotated[str, typer.Option(help="Capture only blocks b % n == i.")] = "0/1",
        merge: Annotated[
            bool, typer.Option(help="Check completeness, write the manifest.")
        ] = False,
        block_size: Annotated[int, typer.Option(help="Prompts per shard file.")] = 256,
    ) -> None:
        """Capture every teacher's answers and top-k readings into a compressed store."""
        from polydistill.store.capture import SHARDS_DIR, merge_store, parse_shard
        from polydistill.store.shards import shard_files

        if merge:
            manifest = merge_store(out)
            typer.echo(f"{out}: complete, {len(manifest['shards'])} shards")
            return
        if config is None:
            raise UserError("capture: give a CONFIG (or --merge to finish a sharded capture)")
        from polydistill.config import load_config
        from polydistill.train.distributed import launched_by_torchrun

        which = parse_shard(shard)
        distributed = launched_by_torchrun()
        if distributed and which != (0, 1):
            raise UserError(
                "capture: under torchrun each process captures its own share (RANK of "
                "WORLD_SIZE); drop --shard"
            )
        cfg = load_config(config, overrides)
        if cfg.threads:
            import torch

            torch.set_num_threads(cfg.threads)
        if distributed:
            shard = f"{os.environ['RANK']}/{os.environ['WORLD_SIZE']}"
            complete = capture_over_ranks(cfg, out, block_size)
        else:
            complete = capture_from_config(cfg, out, which, block_size)
        if complete:
            typer.echo(f"{out}: complete")
        else:
            present = len(shard_files(out / SHARDS_DIR))
            typer.echo(
                f"{out}: shard {shard} done ({present} blocks present); when every shard is "
                f"done, run: polydistill capture --merge --out {out}"
            )
