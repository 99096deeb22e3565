"""Graders: whether a model's answer to a prompt matches its reference, chosen per tag.

    graders = load_graders(Path("graders.yaml"))   # or GradersConfig.model_validate({...})
    grade(graders.for_tag("math"), answer, reference, prompt)   # -> bool

A graders file (unknown keys are errors):

    default: {kind: exact}                  # tags not listed below
    tags:
      trivia: {kind: normalised}
      math:   {kind: numeric, pick: last, absolute: 0.01}
      mc:     {kind: choice, letters: ABCD}
      code:   {kind: regex, pattern: 'return (\\w+)', reference: true}

Kinds:
- `exact`: the answer and the reference are equal after removing surrounding whitespace (the
  world's rule, so its numbers do not move).
- `normalised`: equal after `normalise_answer`: Unicode NFKC, case folded, punctuation (every
  Unicode `P*` character) removed, the articles `a`, `an`, `the` removed as whole words,
  whitespace runs collapsed to one space and trimmed (the SQuAD rule, in Unicode).
- `regex`: the pattern's `group` of its first match in the answer (no match: wrong), and in the
  reference too when `reference` is true (else the whole stripped reference), compared by
  `compare` (`exact` or `normalised`).
- `numeric`: the first or last number (`pick`) of the answer and of the reference (thousands
  commas ignored, `1e-3` and `.5` read); right when |answer - reference| <= max(`absolute`,
  `relative` * |reference|). An answer without a number is wrong; a reference without one is an
  error.
- `choice`: multiple choice. Options are lines of the prompt such as `B) Paris` or `(B) Paris`
  or `B. Paris`. The answer's letter is, in order: a letter at its start (`B`, `(B)`, `B)`,
  `B.`, `B:`); else the one option whose text (normalised) it contains; else the last standalone
  letter in it (`... so the answer is B`). The reference is a letter or an option's text.
"""

import math
import re
import unicodedata
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from polydistill.errors import UserError
from polydistill.overrides import key_path, read_yaml


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class ExactGrader(_Strict):
    """Equal after removing surrounding whitespace."""

    kind: Literal["exact"] = "exact"
    """Grader kind."""


class NormalisedGrader(_Strict):
    """Equal after `normalise_answer` (case, punctuation, articles, whitespace)."""

    kind: Literal["normalised"] = "normalised"
    """Grader kind."""


class RegexGrader(_Strict):
    """Extract with a pattern, then compare."""

    kind: Literal["regex"] = "regex"
    """Grader kind."""
    pattern: str
    """A Python regular expression searched in the answer (first match)."""
    group: int | str = 0
    """The group of the match that is extracted: a number (0: the whole match) or a name."""
    reference: bool = False
    """Extract from the reference with the same pattern too (else the whole stripped
    reference is compared); a reference it does not match is an error."""
    compare: Literal["exact", "normalised"] = "exact"
    """How the extracted texts are compared: equal after stripping, or after `normalise_answer`."""
    ignore_case: bool = False
    """Match the pattern ignoring case."""

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"bad regular expression {pattern!r}: {error}") from None
        return pattern

    @model_validator(mode="after")
    def _has_group(self) -> "RegexGrader":
        compiled = re.compile(self.pattern)
        known = (
            self.group in compiled.groupindex
            if isinstance(self.group, str)
            else 0 <= self.group <= compiled.groups
        )
        if not known:
            raise ValueError(f"pattern {self.pattern!r} has no group {self.group!r}")
        return self


class NumericGrader(_Strict):
    """Compare the first or last number of answer and reference, with a tolerance."""

    kind: Literal["numeric"] = "numeric"
    """Grader kind."""
    pick: Literal["first", "last"] = "last"
    """Which number of the answer (and of the reference) is compared."""
    absolute: Annotated[float, Field(ge=0)] = 0.0
    """Largest absolute difference still right."""
    relative: Annotated[float, Field(ge=0)] = 0.0
    """Largest difference still right, as a share of |reference|."""


class ChoiceGrader(_Strict):
    """Multiple choice: the answer's option letter against the reference's."""

    kind: Literal["choice"] = "choice"
    """Grader kind."""
    letters: Annotated[str, Field(min_length=2, pattern=r"^[A-Za-z]+$")] = "ABCDE"
    """The option letters, e.g. `ABCD`."""


Grader = Annotated[
    ExactGrader | NormalisedGrader | RegexGrader | NumericGrader | ChoiceGrader,
    Field(discriminator="kind"),
]


class GradersConfig(_Strict):
    """The grader of each tag; tags not listed get `default`."""

    default: Grader = ExactGrader()
    """The grader of every tag not in `tags`."""
    tags: dict[str, Grader] = {}
    """A grader per tag."""

    def for_tag(self, tag: str) -> Grader:
        """The grader of `tag`."""
        return self.tags.get(tag, self.default)


def load_graders(path: Path) -> GradersConfig:
    """A graders YAML file, validated; every problem is a one-line `UserError`."""
    if not path.is_file():
        raise UserError(f"graders: no such file: {path}")
    try:
        raw = read_yaml(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as error:
        raise UserError(f"graders {path}: unreadable YAML: {error}") from None
    try:
        return GradersConfig.model_validate(raw or {})
    except ValidationError as error:
        first = error.errors()[0]
        where = key_path(tuple(p for p in first["loc"] if not str(p).startswith("function-")))
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        raise UserError(f"graders {path}: {where}: {message}") from None


_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalise_answer(text: str) -> str:
    """NFKC, case folded, punctuation and the articles a/an/the removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text)
    return " ".join(_ARTICLES.sub(" ", text).split())


_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?")


def numbers(text: str) -> list[float]:
    """Every number in `text`, in order (`1,234.5`, `-3`, `.5`, `2e-3`)."""
    found = []
    for match in _NUMBER.finditer(text):
        token = match.group()
        if not any(c.isdigit() for c in token.split("e")[0].split("E")[0]):
            continue
        try:
            found.append(float(token.replace(",", "")))
        except ValueError:
            continue
    return found


def grade(grader: Grader, answer: str, reference: str, prompt: str = "") -> bool:
    """Whether `answer` is right against `reference` under `grader` (`prompt`: for `choice`)."""
    match grader:
        case ExactGrader():
            return answer.strip() == reference.strip()
        case NormalisedGrader():
            return normalise_answer(answer) == normalise_answer(reference)
        case RegexGrader():
            return _grade_regex(grader, answer, reference)
        case NumericGrader():
            return _grade_numeric(grader, answer, reference)
        case ChoiceGrader():
            options = choice_options(prompt, grader.letters)
            wanted = choice_letter(reference, options, grader.letters)
            if wanted is None:
                raise UserError(
                    f"choice grader: reference {reference!r} is neither an option letter of "
                    f"{grader.letters} nor an option's text"
                )
            return choice_letter(answer, options, grader.letters) == wanted
    raise TypeError(f"unknown grader {grader!r}")


def _extract(grader: RegexGrader, text: str) -> str | None:
    flags = re.IGNORECASE if grader.ignore_case else 0
    found = re.search(grader.pattern, text, flags)
    if found is None:
        return None
    return found.group(grader.group) or ""


def _grade_regex(grader: RegexGrader, answer: str, reference: str) -> bool:
    got = _extract(grader, answer)
    wanted = _extract(grader, reference) if grader.reference else reference
    if wanted is None:
        raise UserError(f"regex grader: pattern {grader.pattern!r} misses reference {reference!r}")
    if got is None:
        return False
    if grader.compare == "normalised":
        return normalise_answer(got) == normalise_answer(wanted)
    return got.strip() == wanted.strip()


def _grade_numeric(grader: NumericGrader, answer: str, reference: str) -> bool:
    wanted = numbers(reference)
    if not wanted:
        raise UserError(f"numeric grader: reference {reference!r} has no number")
    got = numbers(answer)
    if not got:
        return False
    pick = 0 if grader.pick == "first" else -1
    a, r = got[pick], wanted[pick]
    if not (math.isfinite(a) and math.isfinite(r)):
        return a == r
    return abs(a - r) <= max(grader.absolute, grader.relative * abs(r))


def choice_options(prompt: str, letters: str) -> dict[str, str]:
    """The prompt's options, letter -> text, from lines like `B) Paris`, `(B) Paris`, `B. Paris`."""
    line = re.compile(rf"^\s*\(?([{letters}])[\).:]\s*(\S.*?)\s*$", re.MULTILINE)
    return {m.group(1): m.group(2) for m in line.finditer(prompt)}


def choice_letter(text: str, options: dict[str, str], letters: str) -> str | None:
    """The option letter `text` names (see the module's `choice` rule), or None."""
    stripped = text.strip()
    leading = re.match(rf"^\(?([{letters}])(?:[\).:]|\s|$)", stripped)
    if leading:
        return leading.group(1)
    said = f" {normalise_answer(stripped)} "
    named = [
        k for k, v in options.items() if normalise_answer(v) and f" {normalise_answer(v)} " in said
    ]
    if len(named) == 1:
        return named[0]
    standalone = re.findall(rf"(?<![A-Za-z])([{letters}])(?![A-Za-z])", stripped)
    return standalone[-1] if standalone else None


def run_graders(graders: Path | None) -> GradersConfig | None:
    """A run's graders (`eval.graders`), or None for exact match."""
    return load_graders(graders) if graders is not None else None
