"""Each grader kind on its cases and properties; a bad graders file is one line, exit code 2."""

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from polydistill.errors import UserError
from polydistill.evaluate.graders import (
    ChoiceGrader,
    ExactGrader,
    GradersConfig,
    NormalisedGrader,
    NumericGrader,
    RegexGrader,
    choice_letter,
    choice_options,
    grade,
    load_graders,
    normalise_answer,
    numbers,
)

words = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)


@given(words, st.text(" \t\n", max_size=3), st.text(" \t\n", max_size=3))
def test_exact_is_equality_after_stripping(text, before, after):
    assert grade(ExactGrader(), before + text + after, text)
    assert grade(ExactGrader(), text, text + "x") is (text.strip() == (text + "x").strip())


@given(words)
def test_normalised_ignores_case_punctuation_articles_and_spacing(text):
    noisy = f"  The {text.upper()}!! ,"
    assert grade(NormalisedGrader(), noisy, text) is (
        normalise_answer(text.upper()) == normalise_answer(text)
    )
    assert normalise_answer(normalise_answer(text)) == normalise_answer(text)


@pytest.mark.parametrize(
    ("answer", "reference", "right"),
    [
        ("The Eiffel Tower.", "eiffel tower", True),
        ("an   apple", "Apple!", True),
        ("Théâtre", "THÉÂTRE", True),
        ("thereof", "reof", False),  # articles only as whole words
        ("Paris", "London", False),
    ],
)
def test_normalised_cases(answer, reference, right):
    assert grade(NormalisedGrader(kind="normalised"), answer, reference) is right


def test_regex_extracts_from_the_answer_and_optionally_the_reference():
    grader = RegexGrader(kind="regex", pattern=r"answer: (\w+)", group=1)
    assert grade(grader, "so, answer: 42 I think", "42")
    assert not grade(grader, "42", "42")  # no match in the answer: wrong
    both = RegexGrader(kind="regex", pattern=r"#### (?P<n>\S+)", group="n", reference=True)
    assert grade(both, "work... #### 7", "because 3+4 #### 7")
    assert not grade(both, "#### 8", "#### 7")
    with pytest.raises(UserError, match="misses reference"):
        grade(both, "#### 7", "seven")
    loose = RegexGrader(kind="regex", pattern="ANSWER=(.*)", group=1, ignore_case=True,
                        compare="normalised")  # fmt: skip
    assert grade(loose, "answer=The Moon.", "moon")


@given(st.integers(-(10**9), 10**9), st.integers(-(10**6), 10**6))
def test_numeric_reads_the_picked_number_within_tolerance(value, other):
    assert grade(NumericGrader(kind="numeric"), f"first {other}, finally {value}", str(value))
    first = NumericGrader(kind="numeric", pick="first")
    assert grade(first, f"{value} then {other}", f"= {value}")
    assert grade(NumericGrader(kind="numeric"), str(value), str(value + 1)) is False
    loose = NumericGrader(kind="numeric", absolute=1.0)
    assert grade(loose, str(value), str(value + 1))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1,234.5 and -3", [1234.5, -3.0]), (".5 or 2e-3", [0.5, 0.002]), ("none", []),
     ("x=+7.", [7.0])],
)  # fmt: skip
def test_numbers(text, expected):
    assert numbers(text) == expected


def test_numeric_relative_tolerance_and_missing_numbers():
    grader = NumericGrader(kind="numeric", relative=0.01)
    assert grade(grader, "about 1005", "1000")
    assert not grade(grader, "about 1011", "1000")
    assert not grade(grader, "no idea", "1000")
    with pytest.raises(UserError, match="has no number"):
        grade(grader, "5", "five")


PROMPT = "Capital of France?\nA) Berlin\n(B) Paris\nC. Rome\nD: Madrid\nAnswer:"


@pytest.mark.parametrize(
    ("answer", "right"),
    [("B", True), ("(B) because", True), ("B.", True), ("Paris", True), ("It is paris.", True),
     ("I would say the answer is B", True), ("C", False), ("Rome", False), ("", False),
     ("Berlin or Paris", False)],
)  # fmt: skip
def test_choice_by_letter_or_option_text(answer, right):
    grader = ChoiceGrader(kind="choice", letters="ABCD")
    assert choice_options(PROMPT, "ABCD") == {
        "A": "Berlin", "B": "Paris", "C": "Rome", "D": "Madrid"
    }  # fmt: skip
    assert grade(grader, answer, "B", PROMPT) is right
    assert grade(grader, answer, "Paris", PROMPT) is right


@given(st.sampled_from("ABCD"), st.sampled_from(["", "(", " "]), st.sampled_from([")", ".", ":"]))
def test_choice_letter_forms(letter, opening, closing):
    text = f"{opening}{letter}{closing} whatever follows"
    assert choice_letter(text, {}, "ABCD") == letter


def test_choice_reference_must_name_an_option():
    with pytest.raises(UserError, match="neither an option letter"):
        grade(ChoiceGrader(kind="choice", letters="ABCD"), "B", "Lyon", PROMPT)


def test_graders_per_tag_and_default(tmp_path: Path):
    path = tmp_path / "graders.yaml"
    path.write_text(
        "default: {kind: normalised}\n"
        "tags:\n  math: {kind: numeric, absolute: 0.5}\n  mc: {kind: choice, letters: ABCD}\n"
    )
    graders = load_graders(path)
    assert isinstance(graders.for_tag("math"), NumericGrader)
    assert isinstance(graders.for_tag("mc"), ChoiceGrader)
    assert isinstance(graders.for_tag("other"), NormalisedGrader)
    assert isinstance(GradersConfig().for_tag("x"), ExactGrader)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tags: {x: {kind: regex, pattern: '(unclosed'}}", r"tags\.x\.regex\.pattern: bad regular"),
        ("default: {kind: fuzzy}", "does not match any of the expected tags"),
        ("default: {kind: numeric, tolerance: 1}", "unknown key"),
        ("tags: {x: {kind: numeric, absolute: -1}}", "greater than or equal to 0"),
        ("default: [", "unreadable YAML"),
        ("default: {kind: regex, pattern: 'a(b)', group: 2}", "has no group 2"),
        ("default: {kind: regex, pattern: 'a(b)', group: n}", "has no group 'n'"),
    ],
)
def test_a_bad_graders_file_is_one_line(tmp_path: Path, text, message):
    path = tmp_path / "graders.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as error:
        load_graders(path)
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="no such file"):
        load_graders(tmp_path / "missing.yaml")


def test_the_readme_graders_file_loads(tmp_path: Path):
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split("# graders.yaml", 1)[1].split("```", 1)[0].split("\n", 1)[1]
    path = tmp_path / "graders.yaml"
    path.write_text(block)
    graders = load_graders(path)
    assert {tag: g.kind for tag, g in graders.tags.items()} == {
        "trivia": "normalised", "math": "numeric", "mc": "choice", "code": "regex"
    }  # fmt: skip
    assert grade(graders.for_tag("code"), "x\n  return total", "def f():\n    return total")
