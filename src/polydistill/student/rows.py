"""A model's training rows on disk, written chunk by chunk and read back a batch at a time.

    writer = RowsWriter(work / ROWS_DIR)
    writer.add(chunk_rows, first_prompt=256)   # a `DistillationData` of some prompts, in order
    writer.close()
    rows = DiskRows(work / ROWS_DIR)            # in the worker
    prompts, answers, targets = rows.take([5, 17, 2])

Training rows grow with the prompts (a top-k row per answer token), so the recipe appends each
chunk's rows to one flat file per array (a store's chunks are its blocks; live teachers give one
chunk of every prompt) and the batches read the rows a batch needs with `os.pread`, not a memory
map, whose touched pages would count in the process's memory. What stays in memory is the index:
three integers per row (prompt and answer lengths, the prompt it answers). The values read back
are the values written, dtype for dtype, so a batch is the batch the rows in memory give
(`DistillationData.take`).
"""

import json
import os
import shutil
from array import array
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from polydistill.config import RunConfig
from polydistill.student.plans import ModelPlan, plan_rows
from polydistill.student.prompts import Prompts
from polydistill.student.targets import DistillationData, Tally
from polydistill.targets import SparseTargets
from polydistill.teachers.protocol import Teacher
from polydistill.teachers.readings import Readings

ROWS_DIR = "rows"
INDEX_FILE, META_FILE = "index.npz", "meta.json"
EXAMPLES_FILE = "examples.jsonl"
"""Beside a rows folder: its accounts' examples, one JSON per line (`write_accounts`)."""


class TrainingRows(Protocol):
    """What the batches read of a model's rows: in memory (`DistillationData`) or on disk."""

    prompt_of: Sequence[int]

    def __len__(self) -> int: ...

    def lengths(self) -> list[int]: ...

    def take(
        self, rows: Sequence[int]
    ) -> tuple[list[list[int]], list[list[int]], SparseTargets]: ...


ARRAYS = ("prompt_ids", "answer_ids", "target_ids", "target_logprobs", "target_tail", "target_mask")


def _arrays(data: DistillationData) -> dict[str, np.ndarray]:
    """The chunk's flat arrays, in row order (answer tokens and targets share the offsets)."""
    flat = lambda rows: np.asarray([t for r in rows for t in r], dtype=np.int64)  # noqa: E731
    t = data.targets
    return {
        "prompt_ids": flat(data.prompts),
        "answer_ids": flat(data.completions),
        "target_ids": t.ids.numpy(),
        "target_logprobs": t.logprobs.numpy(),
        "target_tail": t.tail.numpy(),
        "target_mask": t.mask.numpy(),
    }


class RowsWriter:
    """Appends chunks of rows to a fresh folder; `close` writes the index that makes it whole."""

    def __init__(self, folder: Path) -> None:
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        self.folder = folder
        self.files = {name: (folder / f"{name}.bin").open("wb") for name in ARRAYS}
        # 8 bytes a row (a list would hold an int object each)
        self.prompt_lengths, self.answer_lengths, self.prompt_of = (array("q") for _ in range(3))
        self.meta: dict | None = None

    def add(self, data: DistillationData, first_prompt: int = 0) -> None:
        """Append `data`'s rows; their prompt indices are local to a chunk starting at
        `first_prompt`."""
        arrays = _arrays(data)
        meta = {n: {"dtype": str(a.dtype), "shape": list(a.shape[1:])} for n, a in arrays.items()}
        if self.meta is None:
            self.meta = meta
        elif meta != self.meta and len(data):
            raise ValueError(f"rows of another layout: {meta} after {self.meta}")
        for name, values in arrays.items():
            self.files[name].write(np.ascontiguousarray(values).tobytes())
        self.prompt_lengths.extend(len(p) for p in data.prompts)
        self.answer_lengths.extend(len(c) for c in data.completions)
        self.prompt_of.extend(first_prompt + i for i in data.prompt_of)

    def close(self) -> Path:
        for f in self.files.values():
            f.close()
        np.savez(
            self.folder / INDEX_FILE,
            prompt_lengths=np.asarray(self.prompt_lengths, dtype=np.int64),
            answer_lengths=np.asarray(self.answer_lengths, dtype=np.int64),
            prompt_of=np.asarray(self.prompt_of, dtype=np.int64),
        )
        (self.folder / META_FILE).write_text(json.dumps(self.meta or {}))
        return self.folder


def write_rows(data: DistillationData, folder: Path) -> Path:
    """All of `data` as one chunk (rows built in memory, e.g. a benchmark's)."""
    writer = RowsWriter(folder)
    writer.add(data)
    return writer.close()


class DiskRows:
    """The rows in `folder`, read on demand (see the module); `prompt_of[r]` is row r's prompt."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        with np.load(self.folder / INDEX_FILE) as index:
            self.prompt_lengths = index["prompt_lengths"]
            self.answer_lengths = index["answer_lengths"]
            self.prompt_of = index["prompt_of"]
        self.meta = json.loads((self.folder / META_FILE).read_text())
        # plain strings: a Path built per read would intern its parts, churning the interpreter's
        # table of interned strings (whose resizing costs megabytes) once per row read
        self.files = {name: str(self.folder / f"{name}.bin") for name in ARRAYS}
        self.prompt_starts = np.concatenate([[0], np.cumsum(self.prompt_lengths)])
        self.answer_starts = np.concatenate([[0], np.cumsum(self.answer_lengths)])

    def __len__(self) -> int:
        return len(self.prompt_lengths)

    def lengths(self) -> list[int]:
        return (self.prompt_lengths + self.answer_lengths).tolist()

    def _read(self, name: str, start: int, count: int) -> np.ndarray:
        layout = self.meta[name]
        dtype, shape = np.dtype(layout["dtype"]), layout["shape"]
        width = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
        fd = os.open(self.files[name], os.O_RDONLY)
        try:
            raw = os.pread(fd, count * width, start * width)
        finally:
            os.close(fd)
        if len(raw) != count * width:
            raise ValueError(f"{self.files[name]}: truncated")
        return np.frombuffer(raw, dtype=dtype).reshape(count, *shape).copy()

    def take(self, rows: Sequence[int]) -> tuple[list[list[int]], list[list[int]], SparseTargets]:
        """Prompt ids, answer ids and the concatenated targets of `rows`, in their order."""
        prompts, answers, pieces = [], [], {n: [] for n in ARRAYS[2:]}
        for r in rows:
            p0, p1 = int(self.prompt_starts[r]), int(self.prompt_starts[r + 1])
            a0, a1 = int(self.answer_starts[r]), int(self.answer_starts[r + 1])
            prompts.append(self._read("prompt_ids", p0, p1 - p0).tolist())
            answers.append(self._read("answer_ids", a0, a1 - a0).tolist())
            for name in pieces:
                pieces[name].append(torch.from_numpy(self._read(name, a0, a1 - a0)))
        ids, logprobs, tail, mask = (torch.cat(pieces[n]) for n in ARRAYS[2:])
        return prompts, answers, SparseTargets(ids, logprobs, tail, mask)


def write_plan_rows(
    cfg: RunConfig,
    plans: dict[Path, ModelPlan],
    teachers: list[Teacher],
    tokenizer: PreTrainedTokenizerBase,
    chunks: Iterable[tuple[int, Prompts, Readings]],
) -> dict[Path, Tally]:
    """Every plan's rows (`plans`: the folder each plan's rows go to) written chunk by chunk
    (`readings.reading_chunks`), and each plan's tally of its accounts, whose examples are
    spilled to `EXAMPLES_FILE` beside its rows folder, chunk by chunk too."""
    writers = {folder: RowsWriter(folder) for folder in plans}
    tallies: dict[Path, Tally] = {}
    for folder in plans:
        (folder.parent / EXAMPLES_FILE).unlink(missing_ok=True)
    for first, prompts, readings in chunks:
        projections: dict = {}  # an answer projected once per chunk for all plans
        for folder, plan in plans.items():
            rows, tally = plan_rows(cfg, plan, teachers, tokenizer, prompts, readings, projections)
            writers[folder].add(rows, first)
            with (folder.parent / EXAMPLES_FILE).open("a") as spill:
                for example in tally.examples:
                    spill.write(json.dumps({**example, "prompt": first + example["prompt"]}))
                    spill.write("\n")
            tally.examples = []
            if folder in tallies:
                tallies[folder].add(tally)
            else:
                tallies[folder] = tally
    for writer in writers.values():
        writer.close()
    return tallies


def write_accounts(path: Path, accounts: dict, examples: Path) -> None:
    """`contributions.json`: `accounts` with the examples read back from `examples`, one at a
    time, as `json.dumps(..., indent=1)` writes the whole."""
    marker = "\0examples\0"
    head, tail = json.dumps({**accounts, "examples": marker}, indent=1).split(json.dumps(marker))
    with path.open("w") as out, examples.open() as lines:
        out.write(head)
        written = 0
        for line in lines:
            item = json.dumps(json.loads(line), indent=1).replace("\n", "\n  ")
            out.write(("[\n  " if not written else ",\n  ") + item)
            written += 1
        out.write("\n ]" if written else "[]")
        out.write(tail)
