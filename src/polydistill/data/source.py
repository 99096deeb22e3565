"""The user's prompt set as one stream of `PromptRecord`s: read, split, deduplicated, filtered.

    summary = DataSummary()
    for record in read_prompts(config, {"student": ContextLimit(count, 2048)}, summary):
        ...
    summary.metrics()   # rows read, dropped (and why), kept per split

Files are read test first, then validation, then train, so that a prompt in a held-out file and
in a training file stays held out. Each row in turn: its layout's prompt (rows without one are
dropped: `empty`, `unsplittable`); its split (its files' split, or by hash for train files when
a split has no files); exact duplicates of an earlier prompt dropped (memory: about 8 bytes per
kept prompt, `dedup`); the split's `max_prompts`; then the length limit of every model. Reading
stops early once every split is full. Memory is otherwise flat in the number of prompts.

Once the stream ends, a split that should have prompts but kept none is a `UserError`.
"""

from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path

from polydistill.data.config import DataConfig
from polydistill.data.dedup import SeenIds
from polydistill.data.formats import read_rows
from polydistill.data.layouts import Parsed, detect_layout, parse_row
from polydistill.data.lengths import ContextLimit, too_long_for
from polydistill.data.records import Layout, PromptRecord, Split, make_record
from polydistill.data.splits import hashed_split
from polydistill.data.summary import DataSummary
from polydistill.errors import UserError

_READ_ORDER: tuple[Split, ...] = ("test", "validation", "train")


def read_prompts(
    config: DataConfig,
    limits: Mapping[str, ContextLimit] | None = None,
    summary: DataSummary | None = None,
) -> Iterator[PromptRecord]:
    """Every kept prompt of every split, streamed; `summary` (if given) counts what happened."""
    summary = DataSummary() if summary is None else summary
    limits = limits or {}
    seen = SeenIds()
    expected = expected_splits(config)
    capped = all(getattr(config.max_prompts, split) is not None for split in expected)
    for split, path in ((s, p) for s in _READ_ORDER for p in getattr(config, s)):
        for record in _records(path, split, config, summary):
            if not seen.add(int(record.id, 16)):
                summary.duplicates += 1
                continue
            cap = getattr(config.max_prompts, record.split)
            if cap is not None and summary.kept[record.split] >= cap:
                summary.over_limit += 1
                continue
            if exceeded := too_long_for(record, limits):
                summary.too_long += 1
                summary.too_long_for.update(exceeded)
                continue
            summary.kept[record.split] += 1
            summary.tags[record.split, record.tag] += 1
            summary.layouts[record.layout] += 1
            yield record
            if capped and _all_full(config, summary, expected):
                break
        if capped and _all_full(config, summary, expected):
            break
    for split in expected:
        if not summary.kept[split]:
            raise UserError(f"data: no {split} prompts left ({summary.describe()})")


def expected_splits(config: DataConfig) -> tuple[Split, ...]:
    """The splits that receive prompts: train, and each with files or a share of train's."""
    carved = config.carved()
    return tuple(
        split
        for split in ("train", "validation", "test")
        if split == "train" or getattr(config, split) or split in carved
    )


def _all_full(config: DataConfig, summary: DataSummary, expected: tuple[Split, ...]) -> bool:
    caps = [getattr(config.max_prompts, split) for split in expected]
    return all(
        cap is not None and summary.kept[s] >= cap for s, cap in zip(expected, caps, strict=True)
    )


def _records(
    path: Path, split: Split, config: DataConfig, summary: DataSummary
) -> Iterator[PromptRecord]:
    """The records of one file: layout from its first row; split from `split` or by hash."""
    carved = config.carved() if split == "train" else {}
    layout: Layout | None = None
    for origin, row in read_rows(path, config.format, config.batch_rows):
        summary.rows += 1
        layout = layout or detect_layout(row, config, origin)
        parsed = parse_row(row, layout, config, origin)
        if not isinstance(parsed, Parsed):
            setattr(summary, parsed, getattr(summary, parsed) + 1)
            continue
        record = make_record(
            split,
            layout,
            messages=parsed.messages,
            text=parsed.text,
            reference=parsed.reference,
            tag=parsed.tag,
            origin=origin,
        )
        if carved and (moved := hashed_split(record.id, config.split_seed, carved)) != split:
            record = replace(record, split=moved)
        yield record
