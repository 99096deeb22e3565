"""SeenIds answers as a set of 64-bit ints would, across its merges into sorted runs."""

from hypothesis import given
from hypothesis import strategies as st

from polydistill.data.dedup import SeenIds

keys = st.integers(0, 2**64 - 1)


@given(
    st.lists(st.one_of(keys, st.integers(0, 40), st.sampled_from([0, 2**63, 2**64 - 1]))),
    st.integers(1, 8),
)
def test_add_says_whether_the_id_is_new_like_a_set(added, recent):
    seen, reference = SeenIds(recent=recent), set()
    for key in added:
        assert seen.add(key) == (key not in reference)
        reference.add(key)
    assert len(seen) == len(reference)


def test_runs_stay_logarithmic():
    seen = SeenIds(recent=4)
    for key in range(0, 4000, 2):
        assert seen.add(key)
    assert len(seen._runs) <= 10
    assert not any(seen.add(key) for key in range(0, 4000, 2))
    assert all(seen.add(key) for key in range(1, 4000, 2))
