"""The text-split rule: a cut at a word end, in the configured share, nothing lost."""

import re

from hypothesis import given
from hypothesis import strategies as st

from polydistill.data.config import TextSplit
from polydistill.data.records import normalise
from polydistill.data.text_split import split_text

texts = st.text(alphabet=st.sampled_from("ab \n\té"), max_size=60).map(normalise)
rules = st.builds(
    TextSplit,
    unit=st.sampled_from(["words", "characters"]),
    fraction=st.floats(0.01, 0.99),
)


@given(text=texts, rule=rules)
def test_a_cut_is_at_a_word_end_and_loses_nothing(text, rule):
    words = text.split()
    halves = split_text(text, rule)
    if len(words) < 2:
        assert halves is None
        return
    prompt, continuation = halves
    assert prompt + continuation == text
    assert prompt and not prompt[-1].isspace() and continuation[0].isspace()
    assert continuation.split()
    assert prompt.split() == words[: len(prompt.split())]


@given(text=texts, fraction=st.floats(0.01, 0.99))
def test_words_unit_takes_the_floor_of_the_share_of_words(text, fraction):
    words = text.split()
    halves = split_text(text, TextSplit(unit="words", fraction=fraction))
    if halves is not None:
        expected = min(max(1, int(fraction * len(words))), len(words) - 1)
        assert len(halves[0].split()) == expected


@given(text=texts, fraction=st.floats(0.01, 0.99))
def test_characters_unit_cuts_at_the_last_word_end_within_the_share(text, fraction):
    halves = split_text(text, TextSplit(unit="characters", fraction=fraction))
    if halves is not None:
        cut = len(halves[0])
        ends = [m.end() for m in re.finditer(r"\S+", text)][:-1]
        within = [end for end in ends if end <= fraction * len(text)]
        assert cut == (within[-1] if within else ends[0])


def test_examples():
    assert split_text("The cat sat on the mat.", TextSplit()) == ("The cat sat", " on the mat.")
    rule = TextSplit(unit="characters", fraction=0.25)
    assert split_text("aaaaaaaaaa b c", rule) == ("aaaaaaaaaa", " b c")
    assert split_text("a bb cc dd", rule) == ("a", " bb cc dd")
