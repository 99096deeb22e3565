"""A store read block by block: each block's readings, with one block in memory at a time.

    for first, readings in block_readings(teachers, prompts, samples=1, max_new_tokens=16,
                                          seed=0, top_k=32, temperature=1.0):
        ...   # the readings of prompts[first : first + len(readings.candidates_of)]

`teachers` are one store's `StoreTeacher`s. Block by block, the readings are those
`gather_readings(teachers, prompts, ...)` gives of the block's prompts (prompt and candidate
indices local to the block), bit for bit, without the index of every candidate that the
`StoreTeacher`s build: the run's teachers' answers are merged into candidates as
`distinct_candidates` merges them, and each candidate's rows are read where a store teacher
reads them, at the first stored candidate with the same prompt (its `chat.prompt_key`) and
answer (a prompt repeated in a later block is read where it was first captured). Finding that
first candidate takes one pass over the shards' text columns, kept as an 8-byte hash per
candidate; the candidate found is compared with the one asked for, so a hash collision fails
instead of reading another answer's rows.
"""

import hashlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import numpy as np

from polydistill.chat import Prompt, prompt_key
from polydistill.errors import UserError
from polydistill.store.cached import (
    INDEX_COLUMNS,
    Store,
    StoreTeacher,
    check_generation,
    check_prompts,
    check_setting,
)
from polydistill.store.table import TeacherBlock, block_candidates
from polydistill.teachers.protocol import TeacherRows, check_rows
from polydistill.teachers.readings import Readings, distinct_candidates

CACHED_BLOCKS = 4
"""Earlier shards' decoded rows kept for the repeated prompts read from them."""


def _key(prompt: str, answer: str) -> int:
    text = prompt.encode() + b"\0" + answer.encode()
    prefix = len(prompt.encode()).to_bytes(8, "little")
    return int.from_bytes(hashlib.blake2b(prefix + text, digest_size=8).digest(), "little")


def first_candidates(store: Store) -> tuple[np.ndarray, np.ndarray]:
    """For every stored candidate (in store order), the store order of the first candidate with
    the same (prompt key, answer); and where each shard's candidates start in that order."""
    keys, starts = [], [0]
    for shard in range(len(store.manifest["shards"])):
        table = store.read(shard, ["prompt_text", "text"])
        texts = table.column("prompt_text").to_pylist(), table.column("text").to_pylist()
        pairs = zip(*texts, strict=True)
        keys.append(np.fromiter((_key(p, t) for p, t in pairs), np.uint64, table.num_rows))
        starts.append(starts[-1] + table.num_rows)
    flat = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
    _, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
    return first[inverse.reshape(-1)], np.asarray(starts)


def _check_settings(
    store: Store, prompts: Sequence[Prompt], top_k: int, temperature: float, **generation
) -> None:
    """What `StoreTeacher.complete` and `.score` check, once for the whole pass."""
    check_prompts(store, prompts)
    check_generation(store, **generation)
    check_setting(store, "temperature", temperature)
    if top_k > store.manifest["top_k"]:
        raise UserError(
            f"store {store.root}: asked for top_k {top_k}, but the store holds the top "
            f"{store.manifest['top_k']}; capture again with a larger top_k"
        )


class _Rows:
    """Decoded teacher rows of the block being read and of a few earlier ones that repeated
    prompts are read from (none when no prompt repeats)."""

    def __init__(self, store: Store, teachers: Sequence[StoreTeacher]) -> None:
        self.store, self.teachers = store, teachers
        self.current: tuple[int, tuple] | None = None
        self.earlier: OrderedDict[int, tuple[dict[str, TeacherBlock], list[tuple]]] = OrderedDict()

    def _load(self, shard: int) -> tuple[dict[str, TeacherBlock], list[tuple]]:
        table = self.store.read(shard, ["prompt_text", "text"])
        texts = table["prompt_text"].to_pylist(), table["text"].to_pylist()
        return {t.name: t.block(shard) for t in self.teachers}, list(zip(*texts, strict=True))

    def shard(self, shard: int, reading: int) -> tuple[dict[str, TeacherBlock], list[tuple]]:
        """Every teacher's block of `shard` and its (prompt key, answer) per row, while the
        block of shard `reading` is read."""
        if shard == reading:
            if self.current is None or self.current[0] != shard:
                self.current = (shard, self._load(shard))
            return self.current[1]
        if shard in self.earlier:
            self.earlier.move_to_end(shard)
        else:
            self.earlier[shard] = self._load(shard)
            while len(self.earlier) > CACHED_BLOCKS:
                self.earlier.popitem(last=False)
        return self.earlier[shard]


def block_readings(
    teachers: Sequence[StoreTeacher], prompts: Sequence[Prompt], *, top_k: int, **settings
) -> Iterator[tuple[int, Readings]]:
    """(first prompt, readings of the block's prompts), block after block; see the module.
    `settings`: `samples`, `max_new_tokens`, `seed` and `temperature`, as `gather_readings`
    takes them."""
    store = teachers[0].store
    settings["temperature"] = float(settings["temperature"])
    _check_settings(store, prompts, top_k, **settings)
    samples = settings["samples"]
    first_of, starts = first_candidates(store)
    size, rows = store.manifest["block_size"], _Rows(store, teachers)
    for shard, entry in enumerate(store.manifest["shards"]):
        first = entry["block"] * size
        count = min(size, len(prompts) - first)
        stored = block_candidates(store.read(shard, INDEX_COLUMNS))
        answers = {t.name: [[""] * count for _ in range(samples)] for t in teachers}
        at: dict[tuple[int, str], int] = {}
        for row, candidate in enumerate(stored):
            at.setdefault((candidate.prompt - first, candidate.text), row)
            for author, sample in candidate.authors:
                if author in answers:
                    answers[author][sample][candidate.prompt - first] = candidate.text
        candidates = distinct_candidates(answers, count)
        candidates_of: list[list[int]] = [[] for _ in range(count)]
        read: dict[str, list[TeacherRows]] = {t.name: [] for t in teachers}
        for c, candidate in enumerate(candidates):
            candidates_of[candidate.prompt].append(c)
            source = int(first_of[starts[shard] + at[(candidate.prompt, candidate.text)]])
            where = int(np.searchsorted(starts, source, side="right")) - 1
            blocks, pairs = rows.shard(where, shard)
            asked = (prompt_key(prompts[first + candidate.prompt]), candidate.text)
            if pairs[source - starts[where]] != asked:
                raise UserError(f"store {store.root}: two readings share a hash; recapture")
            for t in teachers:
                got = blocks[t.name].rows(source - starts[where], min(top_k, t.entry["k"]))
                check_rows(got, f"teacher {t.name!r}")
                read[t.name].append(got)
        yield first, Readings(candidates, candidates_of, read)
