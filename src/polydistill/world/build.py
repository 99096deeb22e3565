"""Building the specialists world: domain data, four tokenizers, and one trained teacher per spec.

    world = build_world(cfg)          # or: polydistill world build CONFIG --out DIR

The world lives in `cfg.world.cache_dir/<key>/`, where `key` hashes everything that shapes it
(world settings and world-teacher specs), so a second run reuses it. It is built in a temporary
folder and renamed into place, so a killed build leaves nothing half-written.

World teachers train in parallel worker processes (as many as fit two threads per core), each
on its own domains, with validation accuracy checked every `eval_every` steps; a teacher stops
as soon as it reaches `target_accuracy` on every one of its domains. Held-out accuracy is never
looked at here, so the run's scores of a teacher are not inflated by stopping.

Reproducible: the same config builds the same world, bit for bit (data, tokenizer files,
teacher weights), on any machine of the same kind with the same library versions, whatever its
core count or `threads`. Domains come from the world's seed alone; the tokenizer trainers'
run-to-run noise is counted away (`world.tokenizers`); each teacher is seeded by its
`train.seed` and trains on its own `train.threads` with deterministic algorithms
(`train.reproducible`), however many train beside it. Not covered: another CPU kind
(instruction set, so other kernels) or other torch / transformers / tokenizers versions, which
may change the last bits and, through stopping, a teacher's step count. The key holds neither
the machine nor the versions, so a cache filled elsewhere is reused as it is.
"""

import hashlib
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from polydistill.config import RunConfig, TeacherConfig, WorldConfig
from polydistill.errors import UserError
from polydistill.processes import stop_workers
from polydistill.progress import console, progress_bars
from polydistill.staging import staged_folder
from polydistill.world import domains as world_domains
from polydistill.world.domains import Example
from polydistill.world.tokenizers import STYLES, train_tokenizer

CHAT_WORDS = ("user", "model", "assistant", "system", "final", "analysis")


@dataclass(frozen=True)
class World:
    root: Path
    train: dict[str, list[Example]]
    heldout: dict[str, list[Example]]
    teachers: dict[str, Path]
    # Where choices are made (teachers stop, students pick a checkpoint); held-out only scores.
    validation: dict[str, list[Example]]

    def tokenizer_dir(self, style: str) -> Path:
        return self.root / "tokenizers" / style


def domain_splits(world: WorldConfig) -> dict[str, world_domains.Splits]:
    """Train, held-out and validation examples of every domain, from the world's seed alone."""
    d, seed = world.domains, world.seed
    return {
        "arithmetic": world_domains.arithmetic(
            seed,
            d.arithmetic.train,
            d.arithmetic.heldout,
            d.arithmetic.max_digits,
            d.arithmetic.min_digits,
            d.arithmetic.max_digits_second,
            d.arithmetic.validation,
        ),
        "facts": world_domains.facts(seed, d.facts.entities),
        "strings": world_domains.strings(
            seed,
            d.strings.train,
            d.strings.heldout,
            d.strings.min_len,
            d.strings.max_len,
            d.strings.alphabet,
            d.strings.validation,
        ),
    }


def world_teachers(cfg: RunConfig) -> list[TeacherConfig]:
    return [t for t in cfg.teachers if t.kind == "world"]


def world_key(cfg: RunConfig) -> str:
    shape = {
        "world": cfg.world.model_dump(mode="json", exclude={"cache_dir"}),
        # exclude_none: a teacher on its family's tokenizer keeps the key it had before
        # `tokenizer` existed, so earlier worlds stay cached.
        "teachers": [
            t.model_dump(
                mode="json", exclude={"path", "licence", "dtype", "template"}, exclude_none=True
            )
            for t in world_teachers(cfg)
        ],
        # 2: a validation split, on which teachers stop (facts gained a fourth template).
        # 3: reproducible: the student tokenizer's scores are counted (the trainer's vary by
        # run); teachers train on their own fixed threads with deterministic algorithms.
        "format": 3,
    }
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


def _write_examples(path: Path, examples: list[Example]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for e in examples:
            f.write(json.dumps({"prompt": e.prompt, "answer": e.answer}, ensure_ascii=False) + "\n")


def _train_teacher(spec: dict, world_root: str, events) -> dict:
    """Worker process: build, train and save one world teacher; returns its summary."""
    from polydistill.train.reproducible import fixed_threads

    teacher = TeacherConfig.model_validate(spec["teacher"])
    with fixed_threads(teacher.train.threads):
        return _train_one_teacher(teacher, spec, Path(world_root), events)


def _train_one_teacher(teacher: TeacherConfig, spec: dict, root: Path, events) -> dict:
    from transformers import AutoTokenizer

    from polydistill.chat import supervised_batches
    from polydistill.evaluate import evaluate_model
    from polydistill.train import sft_loss, train
    from polydistill.world.architectures import build_model, count_parameters
    from polydistill.world.prompts import example_record

    cfg = RunConfig.model_validate(spec["run"])
    tokenizer = AutoTokenizer.from_pretrained(root / "tokenizers" / teacher.tokenizer_style)
    splits = domain_splits(cfg.world)
    examples = [e for d in teacher.domains for e in splits[d].train]
    # Stopping is a choice, so it is made on validation; held-out is only ever scored.
    own_validation = {
        d: [example_record(e, "validation") for e in splits[d].validation] for d in teacher.domains
    }
    batches = supervised_batches(
        tokenizer,
        [e.prompt for e in examples],
        [e.answer for e in examples],
        teacher.train.batch_size,
        teacher.train.seed,
        f"teacher {teacher.name!r}",
        prompt_weight=cfg.world.prompt_loss_weight,
        buckets=teacher.train.buckets,
    )
    model = build_model(teacher.family, teacher.model, tokenizer, teacher.train.seed)
    reached: dict = {}

    def on_step(step: int, record: dict) -> bool:
        events.put(("step", teacher.name, step, record["tokens_per_s"]))
        if step % spec["eval_every"] and step != teacher.train.steps:
            return False
        scores = evaluate_model(
            model, tokenizer, own_validation, 24, 256, f"teacher {teacher.name!r}"
        )
        model.train()
        reached.update(step=step, accuracy=scores["accuracy"])
        events.put(("eval", teacher.name, step, scores["accuracy"]))
        return min(scores["accuracy"].values()) >= spec["target_accuracy"]

    started = time.perf_counter()
    train(model, batches, sft_loss, **teacher.train.loop_arguments(), on_step=on_step)
    out = root / "teachers" / teacher.name
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {
        "name": teacher.name,
        "family": teacher.family,
        "domains": teacher.domains,
        "params": count_parameters(model),
        "steps": reached.get("step"),
        "validation_accuracy": reached.get("accuracy"),
        "seconds": round(time.perf_counter() - started, 1),
    }


def _build_tokenizers(
    root: Path, train_split: dict[str, list[Example]], world: WorldConfig
) -> None:
    corpus = [
        f"{e.prompt} {e.answer}" for examples in train_split.values() for e in examples[:4000]
    ]
    # Real vocabularies spell their chat roles as single tokens; so must ours.
    corpus += list(CHAT_WORDS) * 1000
    for style in STYLES:
        train_tokenizer(style, corpus, world.vocab.of(style)).save_pretrained(
            root / "tokenizers" / style
        )


def _train_teachers(cfg: RunConfig, root: Path) -> list[dict]:
    specs = world_teachers(cfg)
    if not specs:
        return []
    cores = cfg.threads or os.cpu_count() or 1
    # Teachers that reach their target early free their core for the rest, so start them all
    # at once (up to two threads per core) rather than queueing the last ones behind the first.
    # Each trains on its own `train.threads`, so how many run at once changes no weight.
    workers = min(len(specs), max(1, 2 * cores // max(t.train.threads for t in specs)))
    context = multiprocessing.get_context("spawn")
    manager = context.Manager()
    events = manager.Queue()
    run_json = cfg.model_dump(mode="json")
    summaries = []
    with progress_bars() as bars, ProcessPoolExecutor(workers, mp_context=context) as pool:
        tasks = {
            t.name: bars.add_task(f"teacher {t.name} ({t.family})", total=t.train.steps, rate="")
            for t in specs
        }
        futures = [
            pool.submit(
                _train_teacher,
                {
                    "teacher": t.model_dump(mode="json"),
                    "run": run_json,
                    "eval_every": cfg.world.eval_every,
                    "target_accuracy": cfg.world.target_accuracy,
                },
                str(root),
                events,
            )
            for t in specs
        ]
        try:
            _follow(futures, events, bars, tasks)
        except BaseException:
            stop_workers(pool)
            manager.shutdown()
            raise
        for future in futures:
            summary = future.result()
            bars.update(tasks[summary["name"]], completed=summary["steps"], total=summary["steps"])
            summaries.append(summary)
    manager.shutdown()
    return summaries


def _follow(futures, events, bars, tasks) -> None:
    """Show the workers' steps and evaluations until every teacher is done."""
    while not all(f.done() for f in futures) or not events.empty():
        while not events.empty():
            kind, name, step, value = events.get()
            if kind == "step":
                bars.update(tasks[name], completed=step, rate=f"{value:,.0f} tok/s")
            else:
                scores = ", ".join(f"{d} {a:.1%}" for d, a in value.items())
                bars.console.log(f"teacher {name} step {step}: validation {scores}")
        time.sleep(0.2)


def build_world(cfg: RunConfig) -> World:
    """Reuse the cached world of this config, or build it."""
    key = world_key(cfg)
    cache = cfg.world.cache_dir
    root = cache / key
    splits = domain_splits(cfg.world)
    if not (root / "world.json").is_file():
        console.log(f"building world {key} in {cache}")
        with staged_folder(root, replace=True) as staging:
            started = time.perf_counter()
            data = staging / "data"
            data.mkdir()
            for domain, split in splits.items():
                for name, examples in split._asdict().items():
                    _write_examples(data / f"{domain}.{name}.jsonl", examples)
            _build_tokenizers(staging, {d: s.train for d, s in splits.items()}, cfg.world)
            summaries = _train_teachers(cfg, staging)
            record = {
                "key": key,
                "seconds": round(time.perf_counter() - started, 1),
                "teachers": summaries,
                "config": json.loads(cfg.model_dump_json())["world"],
            }
            (staging / "world.json").write_text(json.dumps(record, indent=2))
    else:
        console.log(f"reusing world {key} from {root}")
    teachers = {t.name: root / "teachers" / t.name for t in world_teachers(cfg)}
    missing = [n for n, p in teachers.items() if not (p / "config.json").is_file()]
    if missing:
        raise UserError(
            f"world {root}: teacher checkpoints missing ({', '.join(missing)}); "
            "delete the folder to rebuild it"
        )
    return World(
        root=root,
        train={d: s.train for d, s in splits.items()},
        heldout={d: s.heldout for d, s in splits.items()},
        teachers=teachers,
        validation={d: s.validation for d, s in splits.items()},
    )
