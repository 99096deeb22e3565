"""Which student recipe reaches the specialists benchmark's targets, and when in training?

    python -m benchmarks.student_recipe \\
        --recipe 'thirds=student.prompts_per_tag=8000' \\
        --recipe 'facts 1/7='                              # the config as it is
    python -m benchmarks.student_recipe --heldout 50 \\
        --recipe 'seed 1=student.train.seed=1' --recipe 'seed 2=student.train.seed=2'

The result goes to benchmarks/results/student_recipe.json (`python -m benchmarks.results_md`
renders it into RESULTS.md) unless `--json` names another file.

Each `--recipe NAME=OVERRIDES` is the config (default examples/specialists-benchmark.yaml) plus
its `;`-separated `key=value` overrides (`--set` adds overrides to every recipe, e.g. a
`world.cache_dir`); recipes must share the world, its teachers and `eval`. The student's rows are
built as `polydistill run` builds them (every teacher answers and reads each prompt, the config's
fusion, projection into the student's vocabulary); recipes whose prompts, teachers and fusion
agree share them. Each recipe's student is then trained with `train.train` on its loop settings,
in worker processes, two at a time on two cores (one thread each), while `train.average` keeps
the moving average of its weights at the recipe's `ema_decay` (or `--average`). Every `--every`
steps and at the end, the raw and the averaged weights are scored on the held-out sets (exact
match, greedy): the averaged score is what `ema_decay` would have returned had training stopped
there. The averaged weights are also scored on the validation prompts against the answers the
student's fusion chooses among the teachers' (label-free), the score by which
`student.validate_every` chooses a run's weights: does it choose the points held-out favours?
(It scores the average at `--average` or the recipe's `ema_decay`, every `--every` steps: what
`validate_every` = `--every` would choose for a recipe with that `ema_decay`.)
The targets are the benchmark's: 95% of the best teacher's accuracy per domain.

One seed per recipe (`student.train.seed` in a recipe changes it): on the specialists world,
held-out facts moved by ~0.1 between runs differing only in batching, so repeat a recipe before
trusting a difference. Seconds include the evaluations.
"""

import argparse
import copy
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

from benchmarks import results_md
from polydistill.config import RunConfig, load_config
from polydistill.data import DataSummary
from polydistill.errors import UserError
from polydistill.evaluate import exact_match
from polydistill.inputs import RunInputs
from polydistill.pipeline import evaluate_teachers
from polydistill.report.tables import SPECIALIST_SHARE, best_teachers
from polydistill.student.batches import plan_batches
from polydistill.student.plans import model_plans, plan_data, validation_references
from polydistill.student.prompts import PromptSets, as_prompts, prompt_sets
from polydistill.student.readings import student_teachers, teacher_readings
from polydistill.student.rows import DiskRows, write_rows
from polydistill.train import train
from polydistill.train.average import copy_average_into, fresh_average, update_average
from polydistill.world.architectures import count_parameters
from polydistill.world.inputs import world_inputs

SECTION = "## Student recipe (benchmarks/student_recipe.py)"
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "examples" / "specialists-benchmark.yaml"
# Student settings that shape only training, not the rows the student is trained on.
TRAINING_ONLY = (
    "family",
    "model",
    "train",
    "loss",
    "beta",
    "ce_weight",
    "prompt_loss_weight",
    "curriculum",
    "checkpoint_every",
)


def parse_recipe(text: str) -> tuple[str, list[str]]:
    """`NAME=a.b=1;c=2` -> (NAME, ["a.b=1", "c=2"])."""
    name, sep, overrides = text.partition("=")
    if not sep or not name.strip():
        raise UserError(f"--recipe {text!r}: expected NAME=OVERRIDES (overrides may be empty)")
    return name.strip(), [o.strip() for o in overrides.split(";") if o.strip()]


def load_recipes(
    config: Path, recipes: list[str], common: list[str]
) -> dict[str, tuple[RunConfig, list[str]]]:
    """Each recipe's validated config and overrides; all share the world, teachers and eval."""
    configs: dict[str, tuple[RunConfig, list[str]]] = {}
    for name, overrides in map(parse_recipe, recipes or ["config="]):
        if name in configs:
            raise UserError(f"--recipe {name!r} is given twice")
        cfg = load_config(config, common + overrides)
        if cfg.student is None:
            raise UserError(f"recipe {name!r}: the config has no student: section")
        configs[name] = (cfg, overrides)
    worlds = {name: _world_key(cfg) for name, (cfg, _) in configs.items()}
    first = next(iter(worlds))
    for name, key in worlds.items():
        if key != worlds[first]:
            raise UserError(f"recipe {name!r} changes the world, teachers or eval; compare in one")
    return configs


def _world_key(cfg: RunConfig) -> str:
    teachers = [t.model_dump(mode="json") for t in cfg.teachers]
    return json.dumps(
        [cfg.world.model_dump(mode="json"), teachers, cfg.eval.model_dump(mode="json")]
    )


def rows_key(cfg: RunConfig) -> str:
    """What the student's rows depend on: everything of `student:` but its training (the seed
    only draws sampled answers: greedy ones are the same for every seed)."""
    s = cfg.student.model_dump(mode="json")
    key = {k: v for k, v in s.items() if k not in TRAINING_ONLY}
    if cfg.student.completions_per_prompt > 1:
        key["seed"] = cfg.student.train.seed
    return json.dumps(key, sort_keys=True)


def run_sets(cfg: RunConfig, inputs: RunInputs) -> PromptSets:
    """The run's prompts by split, as `polydistill run` reads them."""
    return prompt_sets(cfg, inputs.prompts.records({}, DataSummary()))


def write_student_rows(cfg: RunConfig, inputs: RunInputs, path: Path) -> dict:
    """The student's fused rows, exactly as `polydistill run` builds them, saved to `path`;
    returns the validation references `student.validate_every` would choose its weights by."""
    tokenizer = inputs.student.tokenizer()
    sets = run_sets(cfg, inputs)
    teachers = student_teachers(cfg, inputs.teachers)
    readings = teacher_readings(cfg, teachers, sets.train)
    plan = model_plans(cfg)[0]
    rows, _ = plan_data(cfg, plan, teachers, tokenizer, sets.train, readings)
    write_rows(rows, path)
    checking = as_prompts(sets.validation)
    checked = teacher_readings(cfg, teachers, checking)
    return validation_references(cfg, plan, teachers, sets.validation, checking, checked)


def train_recipe(spec: dict) -> dict:
    """Worker: one recipe's student, scored raw and averaged every `spec["every"]` steps."""
    torch.set_num_threads(spec["threads"])
    cfg, inputs, heldout = RunConfig.model_validate(spec["run"]), spec["inputs"], spec["heldout"]
    t = cfg.student.train
    tokenizer = inputs.student.tokenizer()
    prompts = run_sets(cfg, inputs).train
    rows = DiskRows(spec["rows"])
    batches, loss_fn = plan_batches(cfg, model_plans(cfg)[0], tokenizer, prompts, rows)
    model = inputs.student.model(t.seed)
    averaged, average = copy.deepcopy(model), fresh_average(model)
    points, started = [], time.perf_counter()

    def score(which, examples=heldout) -> dict[str, float]:
        settings = cfg.eval
        return exact_match(
            which, tokenizer, examples, settings.max_new_tokens, settings.batch_size, spec["name"]
        )

    def on_step(step: int, record: dict) -> None:
        update_average(average, model, spec["decay"], step)
        if step % spec["every"] and step != t.steps:
            return
        copy_average_into(averaged, average)
        raw, smooth = score(model), score(averaged)
        agreement = score(averaged, spec["references"])
        seconds = round(time.perf_counter() - started, 1)
        points.append(
            {
                "step": step,
                "seconds": seconds,
                "loss": record["loss"],
                "raw": raw,
                "averaged": smooth,
                "validation": agreement,
            }
        )
        domains = list(raw)  # a line per point, so that a long run can be followed
        print(
            f"{spec['name']}: step {step}, {seconds:.0f} s, raw {_accuracies(raw, domains)}, "
            f"averaged {_accuracies(smooth, domains)}, validation agreement "
            f"{_accuracies(agreement, domains)}",
            flush=True,
        )

    train(model, batches, loss_fn, **{**t.loop_arguments(), "ema_decay": None}, on_step=on_step)
    return {"name": spec["name"], "params": count_parameters(model), "points": points}


def measure(args: argparse.Namespace, work: Path) -> dict:
    common = list(args.set) + ([f"eval.heldout_limit={args.heldout}"] if args.heldout else [])
    recipes = load_recipes(args.config, args.recipe, common)
    first = next(iter(recipes.values()))[0]
    inputs = world_inputs(first)
    heldout = run_sets(first, inputs).heldout
    teachers = {m: r["accuracy"] for m, r in evaluate_teachers(first, inputs, heldout).items()}
    rows: dict[str, Path] = {}
    references: dict[str, dict] = {}
    specs = []
    for name, (cfg, _) in recipes.items():
        key, own = rows_key(cfg), world_inputs(cfg)  # the recipe's own student architecture
        if key not in rows:
            rows[key] = work / f"rows-{len(rows)}"
            references[key] = write_student_rows(cfg, own, rows[key])
        specs.append(
            {
                "name": name,
                "run": cfg.model_dump(mode="json"),
                "inputs": own,
                "rows": rows[key],
                "references": references[key],
                "heldout": heldout,
                "every": args.every,
                "decay": args.average or cfg.student.train.ema_decay or 0.998,
            }
        )
    cores = args.cores or len(os.sched_getaffinity(0))
    workers = max(1, min(len(specs), cores))
    for spec in specs:
        spec["threads"] = max(1, cores // workers)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        results = list(pool.map(train_recipe, specs))
    for spec, result in zip(specs, results, strict=True):
        result["overrides"], result["decay"] = recipes[spec["name"]][1], spec["decay"]
    domains = list(heldout)
    best = best_teachers(teachers, domains)
    return {
        "config": str(args.config),
        "domains": domains,
        "teachers": teachers,
        "targets": {d: SPECIALIST_SHARE * accuracy for d, (_, accuracy) in best.items()},
        "heldout": {d: len(v) for d, v in heldout.items()},
        "workers": workers,
        "threads": specs[0]["threads"],
        "recipes": results,
    }


def _accuracies(accuracy: dict[str, float], domains: list[str]) -> str:
    return " / ".join(f"{accuracy[d]:.3f}" for d in domains)


def chosen_point(points: list[dict]) -> dict:
    """The point `validate_every` would choose: the highest mean agreement, the earlier on a tie."""
    return max(points, key=lambda p: (_mean(p["validation"]), -p["step"]))


def _mean(values: dict[str, float]) -> float:
    return sum(values.values()) / len(values)


def markdown(result: dict) -> str:
    """The section for one run (`result` as `main` saves it)."""
    domains = result["domains"]
    names = " / ".join(domains)
    targets = _accuracies(result["targets"], domains)
    lines = [
        *results_md.heading(SECTION, result),
        "",
        f"{result['workers']} students at a time on {result['threads']} thread(s) each. Config "
        f"{result['config']}; held-out "
        + ", ".join(f"{n} {d}" for d, n in result["heldout"].items())
        + f" problems. Targets ({SPECIALIST_SHARE:.0%} of the best teacher), {names}: {targets}.",
        "",
        "validation: the averaged weights' agreement with the answers the student's fusion chooses",
        "on the validation prompts (label-free); * marks the point it chooses (`validate_every`).",
        "",
        f"| recipe | step | seconds | loss | raw: {names} | averaged: {names} | validation |",
        "| --- | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for recipe in result["recipes"]:
        label = f"{recipe['name']} (`{'; '.join(recipe['overrides']) or 'as configured'}`, "
        label += f"decay {recipe['decay']})"
        chosen = chosen_point(recipe["points"])
        for point in recipe["points"]:
            raw, averaged, agreement = point["raw"], point["averaged"], point["validation"]
            mark = " *" if point is chosen else ""
            lines.append(
                f"| {label} | {point['step']:,}{mark} | {point['seconds']:.0f} "
                f"| {point['loss']:.4f} | {_accuracies(raw, domains)} "
                f"| {_accuracies(averaged, domains)} | {_accuracies(agreement, domains)} |"
            )
            label = ""
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--json",
        type=Path,
        help="write the result here instead of benchmarks/results/student_recipe.json",
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--recipe", action="append", default=[], help="NAME=k=v;k=v (repeat)")
    parser.add_argument("--set", action="append", default=[], help="k=v for every recipe")
    parser.add_argument("--every", type=int, default=250, help="score every N steps")
    parser.add_argument("--average", type=float, help="decay of the scored moving average")
    parser.add_argument("--heldout", type=int, help="at most N held-out problems per domain")
    parser.add_argument("--cores", type=int, help="cores to use (default: all allowed)")
    args = parser.parse_args(argv)
    if args.every < 1 or (args.average is not None and not 0 <= args.average < 1):
        parser.error("--every must be positive and --average in [0, 1)")
    result = {"command": command_line(args), "environment": results_md.environment()}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="student-recipe-"))
    try:
        result |= measure(args, work)
    except UserError as error:
        parser.exit(2, f"error: {error}\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = results_md.save("student_recipe", result, args.json)
    print(markdown(result))
    print(f"wrote {path}")


def command_line(args: argparse.Namespace) -> str:
    return "python -m benchmarks.student_recipe " + " ".join(
        [f"--config {args.config}"] * (args.config != DEFAULT_CONFIG)
        + [f"--recipe '{r}'" for r in args.recipe]
        + [f"--set '{s}'" for s in args.set]
        + [f"--every {args.every}"]
        + [f"--average {args.average}"] * (args.average is not None)
        + [f"--heldout {args.heldout}"] * bool(args.heldout)
        + [f"--cores {args.cores}"] * bool(args.cores)
    )


if __name__ == "__main__":
    main()
