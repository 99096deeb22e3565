"""The `polydistill` command line.

    polydistill run examples/specialists.yaml --out runs/demo [key=value ...]
    torchrun --nproc-per-node 2 -m polydistill run CONFIG --out DIR   (the student over 2 processes)
    polydistill world build examples/specialists.yaml --out runs/world [key=value ...]
    polydistill report runs/demo                          (report.html and plots/ again)
    polydistill eval runs/demo --data heldout.jsonl       (score a checkpoint on your prompts)
    polydistill policy check CONFIG --policy gov.yaml     (which teachers a policy allows)
    polydistill serve MODEL_DIR [--port P] [--db URL]     (and: keys, usage; see --help)

Overrides set any config field: `teachers[0].train.steps=500`, `eval.heldout_limit=50`.
Bad input prints one line starting with `error:` and exits with code 2.
"""

import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from polydistill.errors import CollectiveFailed, UserError
from polydistill.lineage.command import register as register_policy
from polydistill.serve.commands import register as register_serve
from polydistill.store.command import register as register_capture

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(
    name="polydistill",
    help="Distil one closed student from several open-weight teachers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
world_app = typer.Typer(help="The offline specialists world.", no_args_is_help=True)
app.add_typer(world_app, name="world")
register_serve(app)  # serve, usage, keys
register_capture(app)  # capture
register_policy(app)  # policy check

ConfigArg = Annotated[Path, typer.Argument(help="Run configuration (YAML).")]
OutOption = Annotated[Path, typer.Option("--out", help="Output folder.")]
Overrides = Annotated[list[str] | None, typer.Argument(help="key=value overrides.")]


def _configure(config: Path, overrides: list[str] | None):
    from polydistill.config import load_config

    cfg = load_config(config, overrides)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    return cfg


@app.command()
def run(
    config: ConfigArg,
    out: OutOption,
    overrides: Overrides = None,
    force: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
) -> None:
    """Evaluate the teachers, distil the student, write OUT/metrics.json (building or reusing
    the world for its teachers, student architecture and, with `data: {source: world}`,
    prompts)."""
    cfg = _configure(config, overrides)
    from polydistill.pipeline import check_run
    from polydistill.pipeline import run as run_pipeline
    from polydistill.student.distributed import run_ranks, train_beside_rank_zero
    from polydistill.world.inputs import run_inputs

    with run_ranks(cfg, out) as ranks:  # under torchrun; None in one process
        if ranks is not None and not ranks.main:
            train_beside_rank_zero(ranks)  # rank 0 alone reads the world and writes OUT
            return
        check_run(cfg, out, force)  # output, policy and checkpoints before the world is built
        run_pipeline(cfg, out, run_inputs(cfg), force)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="Output folder of `polydistill run`.")],
) -> None:
    """Write (again) RUN_DIR/report.html and RUN_DIR/plots/ from the run's files."""
    from polydistill.report import write_report

    typer.echo(str(write_report(run_dir)))


@app.command("eval")
def eval_checkpoint(
    target: Annotated[
        Path, typer.Argument(help="A checkpoint folder, or a run folder (its student/).")
    ],
    data: Annotated[
        Path,
        typer.Option(help="Prompts with references: a data file, or a YAML with a data: section."),
    ],
    graders: Annotated[
        Path | None, typer.Option(help="Graders per tag (YAML); default: exact match.")
    ] = None,
    split: Annotated[str, typer.Option(help="The split of a data config to score.")] = "test",
    out: Annotated[Path | None, typer.Option(help="Write the scores here as JSON.")] = None,
    lm_eval_task: Annotated[
        list[Path] | None, typer.Option(help="An lm-evaluation-harness task YAML (repeatable).")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Longest greedy answer.")] = 64,
    batch_size: Annotated[int, typer.Option(min=1, help="Prompts per forward pass.")] = 32,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many per tag.")] = None,
) -> None:
    """Score a checkpoint per tag: graded greedy answers, bits per byte of the references."""
    from polydistill.evaluate.command import evaluate_checkpoint

    evaluate_checkpoint(
        target, data, graders, split, out, lm_eval_task, max_new_tokens, batch_size, limit
    )


@world_app.command("build")
def world_build(config: ConfigArg, out: OutOption, overrides: Overrides = None) -> None:
    """Build (or reuse) just the world and copy it to OUT."""
    from polydistill.pipeline import staged_output
    from polydistill.world.build import build_world

    cfg = _configure(config, overrides)
    with staged_output(out, force=False) as staging:
        world = build_world(cfg)
        shutil.copytree(world.root, staging, dirs_exist_ok=True)
    typer.echo(str(out))


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    # Raising here unwinds the stack, so staging folders are removed and nothing is half-written.
    raise SystemExit(128 + signum)


def main() -> None:
    """Entry point: user errors become one line and exit code 2."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        app(standalone_mode=False)
    except UserError as error:
        # one write: the ranks of a torchrun run share a stream, and their lines must not mix
        sys.stderr.write(f"error: {error}\n")
        sys.exit(error.exit_code)
    except CollectiveFailed as error:  # another process of a torchrun run stopped
        sys.stderr.write(f"error: {error}\n")
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as error:  # click's own usage errors carry an exit code
        code = getattr(error, "exit_code", None)
        if code is None:
            raise
        if hasattr(error, "show"):
            error.show()
        sys.exit(code)
