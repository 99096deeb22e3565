"""The layout of one block in a shard: candidates, and every teacher's readings of them.

    table, counts = block_table(candidates, rows, vocab_sizes, prompts, first_prompt)
    readings = teacher_block(table, "qwen", k=64, vocab_size=151_936)
    readings.rows(c)                     # TeacherRows of candidate c, as the teacher gave them

One Parquet row per candidate: `prompt` (index into the captured prompt list), `prompt_text` (the
whole prompt as `chat.prompt_key` spells it: a conversation's every turn),
`text`, `authors` (JSON list of [teacher, sample]). Per teacher `t`, columns `t/...` hold one
binary value per candidate: the rendering's ids as byte planes (`t/ids/0`, ...), `t/start`, the
packed top-k rows (`t/top_ids/0`, ..., `t/codes`, `t/shift`; see `codec`) and `t/token_logprobs`
(float32, exact). Binary values over one contiguous buffer encode and decode a whole block with a
few numpy passes, and Parquet's per-column zstd compresses each plane on its own.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from polydistill.chat import Prompt, prompt_key
from polydistill.store.codec import (
    PackedRows,
    byte_planes,
    decode_topk,
    encode_topk,
    join_planes,
    planes_for,
)
from polydistill.teachers.protocol import TeacherRows
from polydistill.teachers.readings import Candidate


def _binary(flat: np.ndarray, counts: np.ndarray) -> pa.Array:
    """One binary value per row: row r holds the next `counts[r]` elements of `flat`."""
    data = np.ascontiguousarray(flat).view(np.uint8)
    width = flat.dtype.itemsize
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(np.asarray(counts, dtype=np.int64) * width, out=offsets[1:])
    return pa.Array.from_buffers(
        pa.large_binary(), len(counts), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )


def _flat(column: pa.ChunkedArray, dtype: np.dtype) -> np.ndarray:
    """The concatenated values of a binary column, as `dtype`."""
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset :]
    data = np.frombuffer(array.buffers()[2], dtype=np.uint8)
    return data[offsets[0] : offsets[len(array)]].view(dtype)


def teacher_columns(name: str, vocab_size: int) -> list[str]:
    planes = planes_for(vocab_size)
    return [
        *(f"{name}/ids/{p}" for p in range(planes)),
        f"{name}/start",
        *(f"{name}/top_ids/{p}" for p in range(planes)),
        f"{name}/codes",
        f"{name}/shift",
        f"{name}/token_logprobs",
    ]


def _teacher_arrays(rows: Sequence[TeacherRows], vocab_size: int) -> dict[str, pa.Array]:
    out: dict[str, pa.Array] = {}
    lengths = np.array([len(r.ids) for r in rows], dtype=np.int64)
    positions = np.array([len(r.ids) - r.start for r in rows], dtype=np.int64)
    k = rows[0].top_ids.shape[1]
    ids = np.concatenate([r.ids for r in rows])
    packed = encode_topk(
        np.concatenate([r.top_ids for r in rows]),
        np.concatenate([r.top_logprobs for r in rows]),
        vocab_size,
    )
    planes = planes_for(vocab_size)
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError(f"rendering ids outside the vocabulary of {vocab_size}")
    for p, plane in enumerate(byte_planes(ids, planes)):
        out[f"ids/{p}"] = _binary(plane, lengths)
    out["start"] = pa.array([r.start for r in rows], pa.int32())
    for p in range(planes):
        out[f"top_ids/{p}"] = _binary(packed.id_planes[p], positions * k)
    out["codes"] = _binary(packed.codes, positions * k)
    out["shift"] = _binary(packed.shift, positions)
    token_logprobs = np.concatenate([r.token_logprobs for r in rows]).astype(np.float32)
    out["token_logprobs"] = _binary(token_logprobs, lengths - 1)
    return out


def block_table(
    candidates: Sequence[Candidate],
    rows: dict[str, Sequence[TeacherRows]],
    vocab_sizes: dict[str, int],
    prompts: Sequence[Prompt],
    first_prompt: int,
) -> tuple[pa.Table, dict[str, int]]:
    """The block's table (candidates' prompt indices are local to the block) and the number of
    scored positions per teacher."""
    columns: dict[str, pa.Array] = {
        "prompt": pa.array([first_prompt + c.prompt for c in candidates], pa.int32()),
        "prompt_text": pa.array([prompt_key(prompts[c.prompt]) for c in candidates], pa.string()),
        "text": pa.array([c.text for c in candidates], pa.string()),
        "authors": pa.array([json.dumps(c.authors) for c in candidates], pa.string()),
    }
    positions = {}
    for name, teacher_rows in rows.items():
        for key, array in _teacher_arrays(teacher_rows, vocab_sizes[name]).items():
            columns[f"{name}/{key}"] = array
        positions[name] = sum(len(r.ids) - r.start for r in teacher_rows)
    return pa.table(columns), positions


def block_candidates(table: pa.Table) -> list[Candidate]:
    """The candidates of a block, prompt indices global."""
    prompts = table.column("prompt").to_pylist()
    texts = table.column("text").to_pylist()
    authors = table.column("authors").to_pylist()
    return [
        Candidate(p, text, tuple((str(t), int(s)) for t, s in json.loads(a)))
        for p, text, a in zip(prompts, texts, authors, strict=True)
    ]


@dataclass(frozen=True)
class TeacherBlock:
    """One teacher's decoded rows of every candidate of a block."""

    ids: np.ndarray
    id_offsets: np.ndarray
    starts: np.ndarray
    top_ids: np.ndarray
    top_logprobs: np.ndarray
    position_offsets: np.ndarray
    token_logprobs: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)

    def rows(self, c: int, top_k: int | None = None) -> TeacherRows:
        """Candidate c's rows (the first `top_k` of each, when given)."""
        a, b = self.position_offsets[c], self.position_offsets[c + 1]
        i, j = self.id_offsets[c], self.id_offsets[c + 1]
        return TeacherRows(
            ids=self.ids[i:j],
            start=int(self.starts[c]),
            top_ids=self.top_ids[a:b, :top_k],
            top_logprobs=self.top_logprobs[a:b, :top_k],
            token_logprobs=self.token_logprobs[i - c : j - c - 1],
        )


def teacher_block(table: pa.Table, name: str, k: int, vocab_size: int) -> TeacherBlock:
    """Decode one teacher's columns of a block."""
    planes = planes_for(vocab_size)
    ids = join_planes([_flat(table.column(f"{name}/ids/{p}"), np.uint8) for p in range(planes)])
    id_counts = _counts(table.column(f"{name}/ids/0"))
    id_offsets = np.concatenate([[0], np.cumsum(id_counts)])
    starts = table.column(f"{name}/start").to_numpy().astype(np.int64)
    position_offsets = np.concatenate([[0], np.cumsum(id_counts - starts)])
    packed = PackedRows(
        id_planes=[_flat(table.column(f"{name}/top_ids/{p}"), np.uint8) for p in range(planes)],
        codes=_flat(table.column(f"{name}/codes"), np.uint8),
        shift=_flat(table.column(f"{name}/shift"), np.float32),
    )
    top_ids, top_logprobs = decode_topk(packed, k)
    return TeacherBlock(
        ids=ids,
        id_offsets=id_offsets,
        starts=starts,
        top_ids=top_ids,
        top_logprobs=top_logprobs,
        position_offsets=position_offsets,
        token_logprobs=_flat(table.column(f"{name}/token_logprobs"), np.float32),
    )


def _counts(column: pa.ChunkedArray) -> np.ndarray:
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset :]
    return np.diff(offsets[: len(array) + 1])
