"""Byte-exact alignment of two tokenizations of the same text.

Given the byte length of every teacher token and every student token of one text, the text is
cut wherever both tokenizations have a token boundary at the same byte. Each piece between two
such cuts is a *chunk*: a run of teacher tokens and a run of student tokens that cover exactly
the same bytes. Chunks are contiguous, in order, and together cover every byte once, so a
multibyte character split by byte-fallback or byte-level tokens on one side simply lands inside
one chunk. Zero-length tokens (a SentencePiece dummy prefix) join the chunk they precede or, at
the end, the last chunk.

The cut points are found in one pass over the bytes (a byte-indexed mark array rather than a
merge loop in Python), so the cost is linear in the text length.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Chunks:
    """Chunk c is teacher tokens [teacher[c], teacher[c+1]) and student tokens
    [student[c], student[c+1]), covering bytes [byte[c], byte[c+1])."""

    teacher: np.ndarray
    student: np.ndarray
    byte: np.ndarray

    def __len__(self) -> int:
        return len(self.byte) - 1


def _bounds_at(ends: np.ndarray, is_cut: np.ndarray) -> np.ndarray:
    """Token index after the last token ending at each cut (zero-length tokens stay inside)."""
    if len(ends) == 0:
        return np.zeros(1, dtype=np.int64)
    last_with_end = np.append(ends[1:] != ends[:-1], True)
    closing = np.nonzero(is_cut[ends] & last_with_end)[0] + 1
    bounds = np.concatenate([[0], closing]).astype(np.int64)
    bounds[-1] = len(ends)  # trailing zero-length tokens join the last chunk
    return bounds


def align_byte_lengths(teacher_lengths: np.ndarray, student_lengths: np.ndarray) -> Chunks:
    """Chunks of two tokenizations given each token's byte length (both must sum to the same)."""
    teacher_ends = np.cumsum(np.asarray(teacher_lengths, dtype=np.int64))
    student_ends = np.cumsum(np.asarray(student_lengths, dtype=np.int64))
    total_teacher = int(teacher_ends[-1]) if len(teacher_ends) else 0
    total_student = int(student_ends[-1]) if len(student_ends) else 0
    if total_teacher != total_student:
        raise ValueError(f"tokenizations cover {total_teacher} and {total_student} bytes")
    if total_teacher == 0:
        empty = np.zeros(1, dtype=np.int64)
        return Chunks(empty, empty.copy(), empty.copy())
    teacher_cut = np.zeros(total_teacher + 1, dtype=bool)
    student_cut = np.zeros(total_teacher + 1, dtype=bool)
    teacher_cut[teacher_ends] = True
    student_cut[student_ends] = True
    is_cut = teacher_cut & student_cut
    is_cut[0] = False
    byte = np.concatenate([[0], np.nonzero(is_cut)[0]]).astype(np.int64)
    return Chunks(_bounds_at(teacher_ends, is_cut), _bounds_at(student_ends, is_cut), byte)


@dataclass(frozen=True)
class AlignedSequence:
    """Two tokenized renderings of one completion, aligned over the completion's bytes.

    `teacher_ids` / `student_ids` are whole sequences (template markup included); the completion
    tokens start at `teacher_start` / `student_start` and have the byte lengths given, and when
    `ends` is true each side's next token is its end-of-turn token. Everything else in the
    sequences is markup that neither side's loss sees.
    """

    text: bytes
    teacher_ids: np.ndarray
    student_ids: np.ndarray
    teacher_start: int
    student_start: int
    teacher_lengths: np.ndarray
    student_lengths: np.ndarray
    ends: bool
    chunks: Chunks

    def token_bounds(self, with_end: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Chunk boundaries as indices into the whole sequences (teacher, student); the
        end-of-turn tokens form one more chunk when `with_end` and the rendering has them."""
        teacher = self.chunks.teacher + self.teacher_start
        student = self.chunks.student + self.student_start
        if with_end and self.ends:
            teacher = np.append(teacher, teacher[-1] + 1)
            student = np.append(student, student[-1] + 1)
        return teacher, student


def aligned_sequence(
    text: str,
    teacher_ids: np.ndarray,
    student_ids: np.ndarray,
    teacher_start: int,
    student_start: int,
    teacher_lengths: np.ndarray,
    student_lengths: np.ndarray,
    ends: bool,
) -> AlignedSequence:
    """Align the completion tokens of two renderings (lengths from `token_byte_lengths`)."""
    return AlignedSequence(
        text=text.encode("utf-8"),
        teacher_ids=np.asarray(teacher_ids, dtype=np.int64),
        student_ids=np.asarray(student_ids, dtype=np.int64),
        teacher_start=teacher_start,
        student_start=student_start,
        teacher_lengths=np.asarray(teacher_lengths, dtype=np.int64),
        student_lengths=np.asarray(student_lengths, dtype=np.int64),
        ends=ends,
        chunks=align_byte_lengths(teacher_lengths, student_lengths),
    )
