"""A captured store as teachers: the `Teacher` protocol served from disk, no model in memory.

    store = open_store(Path("store"))
    teachers = store_teachers(store, {"qwen": local_fingerprint(path, "teacher 'qwen'")})
    readings = gather_readings(teachers, prompts, samples=1, max_new_tokens=16, seed=0,
                               top_k=64, temperature=1.0)        # as with the live teachers

`complete` hands back the stored answers and `score` the stored readings of (prompt, answer)
pairs, so the same code trains from live teachers or from a store. Whatever the store cannot
answer exactly is refused with a `UserError` naming the difference: another prompt set or
generation settings, a pair that was never captured, more than the stored top-k, another
temperature, or a configured teacher whose fingerprint differs from the captured one.
Shards are checked against their checksums before their first use.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from polydistill.chat import Prompt, prompt_key
from polydistill.errors import UserError
from polydistill.store.capture import SHARDS_DIR, TOKENIZERS_DIR
from polydistill.store.manifest import (
    MANIFEST_FILE,
    PLAN_FILE,
    check_fingerprint,
    check_same_policy,
    prompts_hash,
    read_json,
    short,
)
from polydistill.store.shards import check_shard, read_shard
from polydistill.store.table import TeacherBlock, block_candidates, teacher_block, teacher_columns
from polydistill.teachers.protocol import Progress, TeacherRows, tokenizer_fingerprint
from polydistill.teachers.readings import Candidate

INDEX_COLUMNS = ["prompt", "prompt_text", "text", "authors"]


@dataclass
class Store:
    """A complete store: its manifest and, built on first use, its candidates in capture order
    and where each one lives (one entry per candidate: what `StoreTeacher` looks answers up in;
    `blocks.block_readings` reads the store without it, a block at a time)."""

    root: Path
    manifest: dict
    verified: set[int] = field(default_factory=set)
    _index: tuple[list[Candidate], list[tuple[int, int]], dict[tuple[str, str], int]] | None = None

    @property
    def teachers(self) -> list[str]:
        return list(self.manifest["teachers"])

    @property
    def candidates(self) -> list[Candidate]:
        return self._indexed()[0]

    @property
    def locations(self) -> list[tuple[int, int]]:
        """(shard, row) of each candidate."""
        return self._indexed()[1]

    @property
    def index(self) -> dict[tuple[str, str], int]:
        """(prompt key, answer) -> its first candidate (`chat.prompt_key`)."""
        return self._indexed()[2]

    def _indexed(self):
        if self._index is None:
            candidates, locations, index = [], [], {}
            for shard in range(len(self.manifest["shards"])):
                table = self.read(shard, INDEX_COLUMNS)
                prompt_texts = table.column("prompt_text").to_pylist()
                for row, candidate in enumerate(block_candidates(table)):
                    index.setdefault((prompt_texts[row], candidate.text), len(candidates))
                    candidates.append(candidate)
                    locations.append((shard, row))
            self._index = (candidates, locations, index)
        return self._index

    def shard_path(self, shard: int) -> Path:
        return self.root / SHARDS_DIR / self.manifest["shards"][shard]["file"]

    def verify(self, shard: int) -> None:
        """Check a shard against its checksums, once per store."""
        path = self.shard_path(shard)
        if shard not in self.verified:
            if check_shard(path) != self.manifest["shards"][shard]["sha256"]:
                raise UserError(f"store shard {path}: not the shard the manifest lists")
            self.verified.add(shard)

    def read(self, shard: int, columns: list[str]) -> pa.Table:
        """Some columns of a shard, its checksum verified once per store."""
        self.verify(shard)
        return read_shard(self.shard_path(shard), columns, verify=False)[0]


def open_store(root: Path, policy: str | None = None) -> Store:
    """Open a complete store (one with `manifest.json`), every shard's checksum checked (a
    file read at a time: nothing of it is kept). `policy`: the digest of the teacher
    policy the caller runs under; a store captured under another is refused before any shard
    is opened."""
    if not (root / MANIFEST_FILE).exists():
        if (root / PLAN_FILE).exists():
            raise UserError(
                f"store {root}: incomplete (no {MANIFEST_FILE}); finish the capture, or run "
                f"`polydistill capture --merge --out {root}` once every shard is done"
            )
        raise UserError(f"store {root}: not a store (no {MANIFEST_FILE})")
    store = Store(root, read_json(root / MANIFEST_FILE, f"store {root}"))
    check_same_policy(root, store.manifest, policy)
    for shard in range(len(store.manifest["shards"])):  # a damaged shard fails here, not later
        store.verify(shard)
    return store


def check_store_policy(root: Path, policy: str | None) -> None:
    """Before anything else of a run: the store at `root` was captured under `policy` (a
    digest), read from its manifest alone."""
    if (root / MANIFEST_FILE).is_file():
        check_same_policy(root, read_json(root / MANIFEST_FILE, f"store {root}"), policy)


def check_setting(store: Store, what: str, asked: object) -> None:
    held = store.manifest[what]
    if asked != held:
        raise UserError(
            f"store {store.root}: asked for {what} {asked}, but the store was captured with "
            f"{held}; capture again with these settings"
        )


def check_generation(store: Store, *, samples: int, max_new_tokens: int, seed: int) -> None:
    """The store's answers are the ones these generation settings give. The first answer is
    greedy, so the seed matters only when the store holds sampled ones: a greedy store serves
    every seed."""
    check_setting(store, "samples", samples)
    check_setting(store, "max_new_tokens", max_new_tokens)
    if samples > 1:
        check_setting(store, "seed", seed)


def check_prompts(store: Store, prompts: Sequence[Prompt]) -> None:
    held = store.manifest["prompts"]
    asked = {"count": len(prompts), "sha256": prompts_hash(prompts)}
    if asked != held:
        raise UserError(
            f"store {store.root}: the prompts differ from the captured ones (store "
            f"{held['count']} prompts, sha256 {short(held['sha256'])}; asked {asked['count']}, "
            f"{short(asked['sha256'])})"
        )


class StoreTeacher:
    """One captured teacher of a store (see `protocol.Teacher`)."""

    def __init__(self, store: Store, name: str) -> None:
        self.store, self.name = store, name
        self.entry = store.manifest["teachers"][name]
        self.tokenizer = _stored_tokenizer(store, name, self.entry["fingerprint"])

    def fingerprint(self) -> dict[str, str]:
        return dict(self.entry["fingerprint"])

    def complete(
        self,
        prompts: Sequence[Prompt],
        *,
        samples: int,
        max_new_tokens: int,
        seed: int,
        on_batch: Progress | None = None,
    ) -> list[list[str]]:
        check_prompts(self.store, prompts)
        check_generation(self.store, samples=samples, max_new_tokens=max_new_tokens, seed=seed)
        answers: list[list[str | None]] = [[None] * len(prompts) for _ in range(samples)]
        for candidate in self.store.candidates:
            for author, sample in candidate.authors:
                if author == self.name:
                    answers[sample][candidate.prompt] = candidate.text
        if on_batch:
            on_batch(len(prompts) * samples, 0)
        return answers  # type: ignore[return-value]  # every slot is filled by the capture

    def score(
        self,
        prompts: Sequence[Prompt],
        completions: Sequence[str],
        *,
        top_k: int,
        temperature: float,
        on_batch: Progress | None = None,
    ) -> list[TeacherRows]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        check_setting(self.store, "temperature", float(temperature))
        if top_k > self.store.manifest["top_k"]:
            raise UserError(
                f"store {self.store.root}: asked for top_k {top_k}, but the store holds the top "
                f"{self.store.manifest['top_k']}; capture again with a larger top_k"
            )
        wanted: dict[int, list[tuple[int, int]]] = {}  # shard -> [(output slot, row)]
        for slot, pair in enumerate(zip(map(prompt_key, prompts), completions, strict=True)):
            candidate = self.store.index.get(pair)
            if candidate is None:
                raise UserError(
                    f"store teacher {self.name!r}: no reading of prompt {short(pair[0])!r} with "
                    f"answer {short(pair[1])!r}; the store holds the teachers' own answers only"
                )
            shard, row = self.store.locations[candidate]
            wanted.setdefault(shard, []).append((slot, row))
        out: list[TeacherRows | None] = [None] * len(prompts)
        k = min(top_k, self.entry["k"])
        for shard, slots in sorted(wanted.items()):
            block = self.block(shard)
            for slot, row in slots:
                out[slot] = block.rows(row, k)
            if on_batch:
                on_batch(len(slots), sum(len(out[s].ids) for s, _ in slots))
        return out  # type: ignore[return-value]

    def block(self, shard: int) -> TeacherBlock:
        """This teacher's decoded rows of one shard."""
        columns = teacher_columns(self.name, self.entry["vocab_size"])
        table = self.store.read(shard, columns)
        return teacher_block(table, self.name, self.entry["k"], self.entry["vocab_size"])


def _stored_tokenizer(store: Store, name: str, fingerprint: dict) -> PreTrainedTokenizerBase:
    path = store.root / TOKENIZERS_DIR / name
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        message = f"store {store.root}: cannot load teacher {name!r}'s tokenizer: {error}"
        raise UserError(message) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    saved = tokenizer_fingerprint(tokenizer)
    for what in ("tokenizer", "chat_template"):
        if saved[what] != fingerprint.get(what):
            raise UserError(f"store {store.root}: teacher {name!r}'s saved {what} was altered")
    return tokenizer


def store_teachers(store: Store, expected: dict[str, dict]) -> list[StoreTeacher]:
    """The store's teachers named in `expected` (in its order), each checked against the
    configured teacher's fingerprint."""
    out = []
    for name, fingerprint in expected.items():
        if name not in store.manifest["teachers"]:
            held = ", ".join(store.teachers)
            raise UserError(f"store {store.root}: no teacher named {name!r} (it holds: {held})")
        check_fingerprint(name, store.manifest["teachers"][name]["fingerprint"], fingerprint)
        out.append(StoreTeacher(store, name))
    return out
