"""Map from a teacher's vocabulary to a student's, by the bytes each token stands for.

For every teacher token the map holds the student token that the same bytes start with: the
longest student-vocabulary prefix of the teacher token's bytes (`piece`) and how many bytes it
covers (`piece_len`). A teacher token whose bytes are exactly one student token maps to it
directly (`piece_len == teacher length`); one that the student spells with several tokens maps
to the first of them, which is where projection puts its probability (see `project`). Special
tokens are never matched to text: they map to the student's special token of the same content
(identical tokenizers therefore map every id to itself), and projection adds the end-of-turn pair.

Among student tokens with the same bytes, a regular token wins over a `<0xNN>` byte-fallback
token, as the student's own tokenizer would choose. The arrays are cached on disk under
`$POLYDISTILL_CACHE/vocabmap` keyed by both vocabularies' byte digests, and in memory.
"""

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from polydistill.align.tokenbytes import VocabBytes, vocab_bytes

_FORMAT = "1"


@dataclass(frozen=True)
class VocabMap:
    """Per teacher id (arrays `[V_teacher + 1]`; the last entry stands for any id past the
    teacher's vocabulary, e.g. padded embedding rows): the student piece and teacher facts."""

    teacher: VocabBytes
    student: VocabBytes
    piece: np.ndarray  # student id, -1 where nothing maps
    piece_len: np.ndarray  # bytes of the teacher token the piece covers
    teacher_head: np.ndarray  # first 8 bytes, big-endian uint64, zero padded
    teacher_length: np.ndarray
    teacher_special: np.ndarray
    student_by_bytes: dict[bytes, int]
    student_max_len: int

    def clip_ids(self, ids: np.ndarray) -> np.ndarray:
        """Teacher ids with every id outside the vocabulary replaced by the sentinel entry."""
        outside = len(self.teacher)
        return np.where((ids >= 0) & (ids < outside), ids, outside)

    @property
    def exact_share(self) -> float:
        """Share of the teacher's text tokens that exist as one student token."""
        text = ~self.teacher.is_special & (self.teacher.lengths > 0)
        exact = (self.piece_len[:-1] == self.teacher.lengths) & (self.piece[:-1] >= 0)
        return float((exact & text).sum() / max(1, text.sum()))

    def longest_piece(self, data: bytes) -> int:
        """The student token that is the longest prefix of `data` (-1 if none is)."""
        for size in range(min(len(data), self.student_max_len), 0, -1):
            found = self.student_by_bytes.get(data[:size])
            if found is not None:
                return found
        return -1


def student_text_index(student: VocabBytes) -> dict[bytes, int]:
    """Bytes -> student id over text tokens; regular tokens win over byte fallback, then low ids."""
    index: dict[bytes, int] = {}
    order = np.lexsort((np.arange(len(student)), student.is_byte_fallback))
    for token_id in order.tolist():
        data = student.token_bytes[token_id]
        if data and not student.is_special[token_id]:
            index.setdefault(data, token_id)
    return index


def _build_pieces(
    teacher: VocabBytes, student: VocabBytes, index: dict[bytes, int], max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    size = len(teacher)
    piece = np.full(size, -1, dtype=np.int64)
    piece_len = np.zeros(size, dtype=np.int64)
    student_specials = {
        student.token_bytes[i]: i for i in np.nonzero(student.is_special)[0].tolist()
    }
    if teacher.digest == student.digest:
        piece[:] = np.arange(size)
        piece_len[:] = teacher.lengths
        return piece, piece_len
    for token_id, data in enumerate(teacher.token_bytes):
        if teacher.is_special[token_id]:
            found = student_specials.get(data)
            if found is not None:
                piece[token_id], piece_len[token_id] = found, len(data)
            continue
        whole = index.get(data)
        if whole is not None:
            piece[token_id], piece_len[token_id] = whole, len(data)
            continue
        for cut in range(min(len(data) - 1, max_len), 0, -1):
            found = index.get(data[:cut])
            if found is not None:
                piece[token_id], piece_len[token_id] = found, cut
                break
    return piece, piece_len


def cache_root() -> Path:
    """Where polydistill caches derived files: $POLYDISTILL_CACHE, else ~/.cache/polydistill."""
    root = os.environ.get("POLYDISTILL_CACHE") or Path.home() / ".cache" / "polydistill"
    return Path(root)


_MEMORY: OrderedDict[tuple[str, str], VocabMap] = OrderedDict()


def build_vocab_map(teacher: VocabBytes, student: VocabBytes, cache: bool = True) -> VocabMap:
    """The map between two vocabularies, from the disk cache when it is there."""
    key = (teacher.digest, student.digest)
    if key in _MEMORY:
        _MEMORY.move_to_end(key)
        return _MEMORY[key]
    index = student_text_index(student)
    max_len = max(map(len, index), default=0)
    path = cache_root() / "vocabmap" / f"v{_FORMAT}-{key[0][:20]}-{key[1][:20]}.npz"
    if cache and path.exists():
        stored = np.load(path)
        piece, piece_len = stored["piece"], stored["piece_len"]
    else:
        piece, piece_len = _build_pieces(teacher, student, index, max_len)
        if cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.partial.npz")
            np.savez(partial, piece=piece, piece_len=piece_len)
            os.replace(partial, path)
    heads = b"".join(data[:8].ljust(8, b"\0") for data in teacher.token_bytes)
    built = VocabMap(
        teacher=teacher,
        student=student,
        piece=np.append(piece, -1),
        piece_len=np.append(piece_len, 0),
        teacher_head=np.concatenate(
            [np.frombuffer(heads, dtype=">u8").astype(np.uint64), np.zeros(1, np.uint64)]
        ),
        teacher_length=np.append(teacher.lengths, 0),
        teacher_special=np.append(teacher.is_special, True),
        student_by_bytes=index,
        student_max_len=max_len,
    )
    _MEMORY[key] = built
    while len(_MEMORY) > 8:
        _MEMORY.popitem(last=False)
    return built


def vocab_map(teacher_tokenizer: object, student_tokenizer: object, teacher: str) -> VocabMap:
    """Map from the tokenizer of teacher `teacher` (named in errors) to the student's."""
    return build_vocab_map(
        vocab_bytes(teacher_tokenizer, f"teacher {teacher!r}"),
        vocab_bytes(student_tokenizer, "student"),
    )
