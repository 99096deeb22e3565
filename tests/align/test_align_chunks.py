"""Chunk alignment of two tokenizations, against a brute-force reference."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from polydistill.align.chunks import align_byte_lengths


def _reference(teacher: list[int], student: list[int]) -> list[tuple[list[int], list[int]]]:
    """Chunks as lists of token indices: cut where both sides have a boundary (quadratic)."""
    teacher_ends = np.cumsum(teacher).tolist()
    student_ends = np.cumsum(student).tolist()
    cuts = sorted((set(teacher_ends) & set(student_ends)) - {0})
    chunks, lo = [], 0
    for cut in cuts:
        t = [i for i, e in enumerate(teacher_ends) if lo < e <= cut or (e == 0 and lo == 0)]
        s = [i for i, e in enumerate(student_ends) if lo < e <= cut or (e == 0 and lo == 0)]
        chunks.append((t, s))
        lo = cut
    return chunks


def _as_lists(chunks) -> list[tuple[list[int], list[int]]]:
    return [
        (
            list(range(chunks.teacher[c], chunks.teacher[c + 1])),
            list(range(chunks.student[c], chunks.student[c + 1])),
        )
        for c in range(len(chunks))
    ]


def test_worked_example_multibyte_and_digits():
    # "日1234": teacher = [日(3 bytes as 1+2), "123", "4"], student = [日, 1, 2, 3, 4]
    chunks = align_byte_lengths(np.array([1, 2, 3, 1]), np.array([3, 1, 1, 1, 1]))
    assert _as_lists(chunks) == [([0, 1], [0]), ([2], [1, 2, 3]), ([3], [4])]
    assert chunks.byte.tolist() == [0, 3, 6, 7]


def test_zero_length_tokens_join_a_neighbouring_chunk():
    chunks = align_byte_lengths(np.array([0, 2, 1, 0]), np.array([1, 1, 1]))
    assert _as_lists(chunks) == [([0, 1], [0, 1]), ([2, 3], [2])]


def test_unequal_totals_are_a_bug():
    with pytest.raises(ValueError, match="cover 3 and 2 bytes"):
        align_byte_lengths(np.array([3]), np.array([2]))


def test_empty_text_has_no_chunks():
    assert len(align_byte_lengths(np.array([], dtype=int), np.array([], dtype=int))) == 0


@st.composite
def _two_tokenizations(draw):
    total = draw(st.integers(2, 60))
    sides = []
    for _ in range(2):
        cuts = sorted(draw(st.sets(st.integers(1, total - 1), max_size=total)) | {total})
        lengths = np.diff([0, *cuts]).tolist()
        sides.append([0, *lengths] if draw(st.booleans()) else lengths)  # a dummy-prefix token
    return sides


@given(_two_tokenizations())
def test_matches_brute_force(sides):
    teacher, student = sides
    chunks = align_byte_lengths(np.array(teacher), np.array(student))
    assert _as_lists(chunks) == _reference(teacher, student)
