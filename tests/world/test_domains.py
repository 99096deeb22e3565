"""The world's domains: deterministic, disjoint splits, correct gold answers."""

from hypothesis import given
from hypothesis import strategies as st

from polydistill.world import domains


def test_splits_are_deterministic_and_disjoint():
    for make in (
        lambda: domains.arithmetic(3, 500, 50, 3),
        lambda: domains.strings(3, 500, 50, 3, 7, "abcdefgh"),
        lambda: domains.facts(3, 20),
    ):
        splits = make()
        assert splits == make()
        prompts = [{e.prompt for e in split} for split in splits]
        assert all(prompts)
        assert not prompts[0] & prompts[1] and not prompts[0] & prompts[2]
        assert not prompts[1] & prompts[2]


def test_held_out_split_does_not_depend_on_the_validation_size():
    small = domains.arithmetic(3, 500, 50, 3, validation=10)
    large = domains.arithmetic(3, 500, 50, 3, validation=80)
    assert small.heldout == large.heldout and small.train == large.train
    assert (len(small.validation), len(large.validation)) == (10, 80)


def test_arithmetic_gold_is_the_sum():
    train, heldout, validation = domains.arithmetic(0, 300, 30, 3)
    for example in train + heldout + validation:
        a, b = example.prompt.split("+")
        assert int(example.answer) == int(a) + int(b)
        assert len(a) <= 3 and len(b) <= 3


def test_arithmetic_operand_widths():
    train, heldout, _ = domains.arithmetic(0, 300, 30, max_digits=3, min_digits=3)
    for example in train + heldout:
        assert all(len(n) == 3 for n in example.prompt.split("+"))


def test_arithmetic_second_operand_can_be_shorter():
    train = domains.arithmetic(0, 300, 30, max_digits=3, max_digits_second=2).train
    widths = [tuple(len(n) for n in e.prompt.split("+")) for e in train]
    assert all(b <= 2 for _, b in widths) and any(a == 3 for a, _ in widths)


def test_strings_gold_is_the_reversal():
    train = domains.strings(0, 200, 20, 3, 7, "xyz").train
    for example in train:
        word = example.prompt.removeprefix("reverse: ")
        assert example.answer == word[::-1] and set(word) <= set("xyz")


def test_facts_hold_each_fact_out_through_one_phrasing():
    kb = domains.knowledge_base(5, 12)
    train, heldout, validation = domains.facts(5, 12)
    assert len(heldout) == len(validation) == 12 * 3
    assert len(train) == 12 * 3 * 2
    values = {v for attributes in kb.values() for v in attributes.values()}
    assert {e.answer for e in heldout + validation} <= values
    for example in heldout + validation:
        name = next(n for n in kb if n in example.prompt)
        assert example.answer in kb[name].values()
        assert any(name in e.prompt and e.answer == example.answer for e in train)
    for name in kb:  # each fact: two phrasings trained, one held out, one validated, all distinct
        asked = [{e.prompt for e in split if name in e.prompt} for split in (train, heldout)]
        assert (len(asked[0]), len(asked[1])) == (6, 3)
    assert len({e.prompt.replace(next(n for n in kb if n in e.prompt), "") for e in validation}) > 3


def test_too_small_a_problem_space_is_a_user_error():
    import pytest

    from polydistill.errors import UserError

    with pytest.raises(UserError, match="too small"):
        domains.arithmetic(0, 5000, 100, 1)


@given(st.text(max_size=20))
def test_check_is_exact_match_up_to_surrounding_space(text):
    example = domains.Example("strings", "reverse: x", "abc")
    assert domains.check(example, "  abc\n")
    assert domains.check(example, text) == (text.strip() == "abc")
