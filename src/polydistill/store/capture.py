"""The capture loop: every teacher's readings of the prompts, block by block, into a store.

    done = capture_store(teachers, prompts, Path("store"), top_k=64, temperature=1.0,
                         samples=1, max_new_tokens=16, seed=0, shard=(0, 2))
    merge_store(Path("store"))           # once every worker is done: checks, writes manifest.json

The prompts are cut into blocks of `block_size`. For each block, `gather_readings` has every
teacher answer every prompt (sample seeds per block, `manifest.block_seed`) and every teacher
score every distinct answer; the block's shard is then written atomically (`shards`). A capture
that is killed resumes at the first block without a shard, so no row is written twice or lost.
`shard=(i, n)` captures only the blocks b with b % n == i, so n processes or machines sharing
the folder capture disjoint parts; whichever finds every block present writes `manifest.json`
(as does `merge_store`, which says which blocks are missing). The teachers' tokenizers are saved
under `tokenizers/` so that a store teacher renders and aligns exactly as the original.
"""

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path

from polydistill.chat import Prompt
from polydistill.errors import UserError
from polydistill.progress import console, progress_bars
from polydistill.staging import staged_folder, write_json
from polydistill.store.manifest import (
    MANIFEST_FILE,
    PLAN_FILE,
    block_seed,
    capture_plan,
    check_same_plan,
    read_json,
)
from polydistill.store.shards import (
    check_shard,
    remove_leftovers,
    shard_files,
    shard_metadata,
    write_shard,
)
from polydistill.store.table import block_table
from polydistill.teachers.protocol import Progress, Teacher
from polydistill.teachers.readings import Readings, gather_readings

SHARDS_DIR, TOKENIZERS_DIR = "shards", "tokenizers"


def parse_shard(text: str) -> tuple[int, int]:
    """`"i/n"` -> (i, n), with 0 <= i < n."""
    index, sep, count = text.partition("/")
    if not sep or not index.isdigit() or not count.isdigit() or not 0 <= int(index) < int(count):
        raise UserError(f"--shard {text!r}: expected i/n with 0 <= i < n, e.g. 0/4")
    return int(index), int(count)


def start_store(out: Path, teachers: Sequence[Teacher], plan: dict) -> None:
    """Write the plan (or check a resumed capture's) and save the teachers' tokenizers."""
    out.mkdir(parents=True, exist_ok=True)
    if (out / PLAN_FILE).exists():
        check_same_plan(out, read_json(out / PLAN_FILE, f"store {out}"), plan)
    else:
        write_json(out / PLAN_FILE, plan)
    for teacher in teachers:
        target = out / TOKENIZERS_DIR / teacher.name
        if not target.exists():
            try:
                with staged_folder(target, replace=False) as staging:
                    teacher.tokenizer.save_pretrained(staging)
            except FileExistsError:
                pass  # another worker saved it first


def _blocks_to_capture(shards: Path, mine: list[int]) -> list[int]:
    """My blocks without a sound shard; damaged shards of my blocks are deleted."""
    remove_leftovers(shards, set(mine))
    found = shard_files(shards)
    todo = []
    for block in mine:
        sound = []
        for path in found.get(block, []):
            try:
                check_shard(path)
                sound.append(path)
            except UserError as error:
                console.log(f"capture: {error}; capturing block {block} again")
                path.unlink()
        for extra in sound[1:]:
            extra.unlink()
        if not sound:
            todo.append(block)
    return todo


def _rate_bars(bars) -> Callable[[str, int], Progress]:
    """Progress factory for `gather_readings`: one bar per pass, growing with every block."""
    tasks: dict[str, tuple[int, float, list[int]]] = {}

    def make(description: str, rows: int) -> Progress:
        if description not in tasks:
            tasks[description] = (bars.add_task(description, total=0, rate=""), time.time(), [0])
        task, started, tokens = tasks[description]
        bars.update(task, total=bars.tasks[task].total + rows)

        def advance(done: int, new_tokens: int) -> None:
            tokens[0] += new_tokens
            rate = tokens[0] / max(time.time() - started, 1e-9)
            bars.update(task, advance=done, rate=f"{rate:,.0f} tok/s")

        return advance

    return make


def _check_rows(readings: Readings, plan: dict) -> None:
    for name, rows in readings.rows.items():
        k = plan["teachers"][name]["k"]
        if rows and rows[0].top_ids.shape[1] != k:
            raise ValueError(f"teacher {name!r} gave top-{rows[0].top_ids.shape[1]} rows, not {k}")


def write_block(
    out: Path, plan: dict, block: int, readings: Readings, prompts: Sequence[Prompt]
) -> Path:
    """Write one block's shard: `readings` of the block's `prompts` (indices local to it)."""
    _check_rows(readings, plan)
    vocab = {name: t["vocab_size"] for name, t in plan["teachers"].items()}
    first = block * plan["block_size"]
    table, positions = block_table(readings.candidates, readings.rows, vocab, prompts, first)
    metadata = {"block": block, "candidates": table.num_rows, "positions": positions}
    return write_shard(out / SHARDS_DIR, block, table, metadata)


def capture_store(
    teachers: Sequence[Teacher],
    prompts: Sequence[Prompt],
    out: Path,
    *,
    top_k: int,
    temperature: float,
    samples: int,
    max_new_tokens: int,
    seed: int,
    block_size: int = 256,
    shard: tuple[int, int] = (0, 1),
    show_progress: bool = True,
    on_block: Callable[[int], None] | None = None,
    policy: str | None = None,
) -> bool:
    """Capture this worker's blocks that are not yet in `out`; True when the store is complete
    (manifest written). `on_block(b)` runs after block b's shard is in place."""
    if not prompts:
        raise UserError("capture: no prompts")
    if block_size <= 0:
        raise UserError(f"capture: block size must be positive, got {block_size}")
    settings = dict(top_k=top_k, temperature=temperature, samples=samples)
    plan = capture_plan(
        teachers,
        prompts,
        **settings,
        max_new_tokens=max_new_tokens,
        seed=seed,
        block_size=block_size,
        policy=policy,
    )
    start_store(out, teachers, plan)
    index, count = shard
    todo = _blocks_to_capture(out / SHARDS_DIR, list(range(index, plan["blocks"], count)))
    with progress_bars() if show_progress else nullcontext() as bars:
        blocks_task = bars.add_task("capture blocks", total=len(todo), rate="") if bars else None
        passes = _rate_bars(bars) if bars else None
        for block in todo:
            first = block * block_size
            chunk = list(prompts[first : first + block_size])
            readings = gather_readings(
                teachers,
                chunk,
                **settings,
                max_new_tokens=max_new_tokens,
                seed=block_seed(seed, block),
                progress=passes,
            )
            write_block(out, plan, block, readings, chunk)
            if bars:
                bars.update(blocks_task, advance=1)
            if on_block:
                on_block(block)
    if len(shard_files(out / SHARDS_DIR)) < plan["blocks"]:
        return False
    merge_store(out)
    return True


def merge_store(out: Path) -> dict:
    """Check that every block has one sound shard and write `manifest.json`; returns it."""
    plan = read_json(out / PLAN_FILE, f"store {out}")
    found = shard_files(out / SHARDS_DIR)
    missing = [b for b in range(plan["blocks"]) if b not in found]
    if missing:
        listed = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise UserError(
            f"store {out}: {len(missing)} of {plan['blocks']} blocks missing ({listed}); run the "
            "capture for them (the --shard i/n workers that own them) and merge again"
        )
    shards = []
    for block in range(plan["blocks"]):
        if len(found[block]) > 1:
            names = ", ".join(p.name for p in found[block])
            raise UserError(f"store {out}: block {block} has several shards ({names}); keep one")
        path = found[block][0]
        checksum = check_shard(path)
        metadata = shard_metadata(path)
        shards.append({"block": block, "file": path.name, "sha256": checksum, **metadata})
    manifest = {**plan, "shards": shards}
    write_json(out / MANIFEST_FILE, manifest)
    return manifest
