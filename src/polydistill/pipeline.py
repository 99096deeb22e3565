"""`polydistill run`: the main job, top to bottom.

0. Check every real checkpoint's tokenizer, so that a bad path fails at once.
1. Build (or reuse) the world: domain data, tokenizers, world teachers.
2. Evaluate every teacher (world-trained or a real local checkpoint) on every held-out domain.
3. Write `metrics.json`, the resolved config and the world's location into the output folder.

The output folder is assembled in a temporary sibling and renamed into place at the end, so a
failed or interrupted run leaves no half-written folder and never touches an earlier result
unless `force` is given (then the old folder is replaced only once the new one is complete).
"""

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from polydistill.config import RunConfig
from polydistill.errors import UserError
from polydistill.evaluate import evaluate_model
from polydistill.progress import console, progress_bars
from polydistill.teachers import load_checkpoint, load_tokenizer
from polydistill.world.build import World, build_world
from polydistill.world.domains import DOMAINS


@contextmanager
def staged_output(out: Path, force: bool) -> Iterator[Path]:
    """A temporary folder that becomes `out` only if the block completes."""
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(
            f"output folder {out} already exists and is not empty; pass --force to replace it"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield staging
        if out.exists():
            retired = out.with_name(f".{out.name}.old")
            shutil.rmtree(retired, ignore_errors=True)
            out.rename(retired)
            staging.rename(out)
            shutil.rmtree(retired)
        else:
            staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def heldout_sets(world: World, limit: int | None) -> dict:
    return {d: world.heldout[d][:limit] if limit else world.heldout[d] for d in DOMAINS}


def evaluate_teachers(cfg: RunConfig, world: World) -> dict[str, dict]:
    heldout = heldout_sets(world, cfg.eval.heldout_limit)
    results: dict[str, dict] = {}
    with progress_bars() as bars:
        for teacher in cfg.teachers:
            who = f"teacher {teacher.name!r}"
            path = teacher.path or world.teachers[teacher.name]
            model, tokenizer = load_checkpoint(path, who)
            total = sum(len(v) for v in heldout.values())
            task = bars.add_task(f"evaluate teacher:{teacher.name}", total=total, rate="")
            started = time.perf_counter()

            def advance(n: int, task: int = task, started: float = started) -> None:
                bars.advance(task, n)
                done = bars.tasks[task].completed
                bars.update(task, rate=f"{done / (time.perf_counter() - started):,.1f} ex/s")

            results[f"teacher:{teacher.name}"] = evaluate_model(
                model,
                tokenizer,
                heldout,
                cfg.eval.max_new_tokens,
                cfg.eval.batch_size,
                who,
                advance,
            )
    return results


def run(cfg: RunConfig, out: Path, force: bool = False) -> dict:
    """The whole job; returns the metrics written to `out/metrics.json`."""
    for teacher in cfg.teachers:
        if teacher.path is not None:  # fail fast, before minutes of world building
            load_tokenizer(teacher.path, f"teacher {teacher.name!r}")
    with staged_output(out, force) as staging:
        world = build_world(cfg)
        metrics = {"domains": list(DOMAINS), "models": evaluate_teachers(cfg, world)}
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (staging / "config.yaml").write_text(
            yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
        )
        (staging / "world.json").write_text(
            json.dumps({"root": str(world.root.resolve())}, indent=2)
        )
    console.log(f"wrote {out / 'metrics.json'}")
    return metrics
