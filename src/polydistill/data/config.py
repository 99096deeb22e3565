"""The `data:` section: where the user's prompts are, in which layout, and how they are split.

    data:
      train: prompts.jsonl            # one file: validation and test are carved out by hash
      fractions: {validation: 0.05, test: 0.05}

    data:
      train: [chats/train.parquet]    # or named files per split
      validation: chats/validation.parquet
      test: chats/test.parquet
      columns: {prompt: question, reference: answer, tag: topic}

A split without files of its own receives, by a salted hash of each prompt's id, its
`fractions` share of the train files' prompts; so the splits are the same in every run, on every
machine and in every row order. Files of a split are read in order; a path may be a JSONL,
Parquet or CSV file or a folder written by `datasets.Dataset.save_to_disk`.
"""

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

Format = Literal["auto", "jsonl", "parquet", "csv", "datasets"]
LayoutChoice = Literal["auto", "messages", "prompt", "text"]
Positive = Annotated[int, Field(gt=0)]


class _Strict(BaseModel):
    # strict as the run config's sections: `true` is never a number, nor `"3"` a count
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, use_attribute_docstrings=True, strict=True
    )


def _listed(value: object) -> object:
    return [value] if isinstance(value, str | Path) else value


# A path is the one value YAML cannot spell as its own type.
Paths = Annotated[list[Annotated[Path, Field(strict=False)]], BeforeValidator(_listed)]
"""One path or a list of them."""


class Columns(_Strict):
    """The names of the columns (JSONL keys) in the user's files, for each role a column plays."""

    messages: str = "messages"
    """Chat turns: a list of `{role, content}`; system/user turns, a trailing assistant turn is
    the reference answer."""
    prompt: str = "prompt"
    """A prompt string, asked as one user turn."""
    completion: str = "completion"
    """With `prompt`: a reference answer (used when there is no `reference` column)."""
    reference: str = "reference"
    """With `prompt`: a reference answer, for evaluation and the gold-reading baselines only."""
    text: str = "text"
    """A plain text, split into a completion-style prompt and its continuation (the reference)."""
    tag: str = "tag"
    """Optional: the row's tag (balancing, per-tag report rows, routing); absent means no tag."""


class TextSplit(_Strict):
    """How a `text` row becomes a prompt and a continuation: the prompt ends at a word end.

    `words`: the prompt is the first `fraction` of the text's whitespace-separated words (at
    least one word, and at least one word left for the continuation). `characters`: the prompt
    ends at the last word end at or before `fraction` of the characters (the first word end if
    none is). The continuation keeps its leading whitespace. A text of one word is dropped and
    counted as unsplittable.
    """

    unit: Literal["words", "characters"] = "words"
    """What `fraction` counts: whitespace-separated words or characters."""
    fraction: Annotated[float, Field(gt=0, lt=1)] = 0.5
    """The share of the text (in `unit`) that becomes the prompt."""


class Fractions(_Strict):
    """The shares of the train files' prompts moved to the splits that have no files."""

    validation: Annotated[float, Field(ge=0, lt=1)] = 0.05
    """Share of the train files' prompts for validation, when validation has no files."""
    test: Annotated[float, Field(ge=0, lt=1)] = 0.05
    """Share of the train files' prompts for test, when test has no files."""

    @model_validator(mode="after")
    def _leaves_training(self) -> "Fractions":
        if self.validation + self.test >= 1:
            raise ValueError(
                f"validation {self.validation} + test {self.test} leave nothing for train"
            )
        return self


class SplitLimits(_Strict):
    """The most prompts kept per split (the first ones read); None keeps them all."""

    train: Positive | None = None
    """Most train prompts kept."""
    validation: Positive | None = None
    """Most validation prompts kept."""
    test: Positive | None = None
    """Most test prompts kept."""


class DataConfig(_Strict):
    """The user's prompt set: files per split, their format and layout, filtering and splits."""

    train: Annotated[Paths, Field(min_length=1)]
    """Files (or `save_to_disk` folders) of training prompts; also the source of the
    validation and test prompts when those have no files of their own."""
    validation: Paths = []
    """Files of validation prompts; empty: `fractions.validation` of the train files' prompts."""
    test: Paths = []
    """Files of test prompts; empty: `fractions.test` of the train files' prompts."""
    fractions: Fractions = Fractions()
    """Shares of the train files' prompts moved to validation and test when they have no files."""
    split_seed: int = 0
    """Salt of the hashed split: another seed draws other validation and test prompts."""
    format: Format = "auto"
    """File format of every path; `auto` reads it from the suffix (`.jsonl`/`.json`,
    `.parquet`/`.pq`, `.csv`/`.tsv`) or from a folder written by `save_to_disk`."""
    layout: LayoutChoice = "auto"
    """Row layout; `auto`: the first of `messages`, `prompt`, `text` whose column a file has."""
    columns: Columns = Columns()
    """The names of the columns in the files."""
    text_split: TextSplit = TextSplit()
    """How a `text` row is split into a completion-style prompt and its continuation."""
    max_prompts: SplitLimits = SplitLimits()
    """The most prompts kept per split, after every filter."""
    batch_rows: Positive = 1024
    """Rows decoded at a time from Parquet files and `datasets` folders (memory against speed)."""

    @model_validator(mode="after")
    def _paths_exist(self) -> "DataConfig":
        for split in ("train", "validation", "test"):
            for path in getattr(self, split):
                if not path.exists():
                    raise ValueError(f"{split}: no such file or folder: {path}")
        return self

    @model_validator(mode="after")
    def _fractions_apply(self) -> "DataConfig":
        for split in ("validation", "test"):
            has_files = bool(getattr(self, split))
            if has_files and getattr(self.fractions, split) > 0 and self._set_fraction(split):
                raise ValueError(
                    f"fractions.{split} applies only when {split} has no files of its own"
                )
        return self

    def _set_fraction(self, split: str) -> bool:
        return "fractions" in self.model_fields_set and split in self.fractions.model_fields_set

    def carved(self) -> dict[str, float]:
        """The splits carved out of the train files by hash, and their shares."""
        return {
            split: getattr(self.fractions, split)
            for split in ("validation", "test")
            if not getattr(self, split) and getattr(self.fractions, split) > 0
        }
