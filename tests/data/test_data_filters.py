"""Duplicates, empty and unsplittable rows, split caps and context limits are dropped and
counted; a split left empty is a one-line error."""

import pytest
from prompt_files import write_prompts

from polydistill.data import ContextLimit, DataConfig, DataSummary, read_prompts
from polydistill.errors import UserError

ALL_TRAIN = {"validation": 0, "test": 0}


def _read(path, limits=None, **config):
    summary = DataSummary()
    records = list(read_prompts(DataConfig(train=path, **config), limits, summary))
    return records, summary


def test_exact_duplicates_after_normalisation_are_dropped_keeping_the_first(tmp_path):
    rows = [
        {"prompt": "Hello", "reference": "first", "tag": "a"},
        {"prompt": "  Hello\n", "reference": "second", "tag": "b"},
        {"prompt": "hello", "reference": "other case", "tag": "a"},
        {"prompt": "Cafe\u0301", "reference": None, "tag": "a"},
        {"prompt": "Caf\u00e9", "reference": None, "tag": "a"},
        {"prompt": "Hello", "reference": "third", "tag": "c"},
    ]
    path = write_prompts(rows, tmp_path / "p", "parquet")
    records, summary = _read(path, fractions=ALL_TRAIN)
    assert [(r.messages[0].content, r.reference) for r in records] == [
        ("Hello", "first"),
        ("hello", "other case"),
        ("Caf\u00e9", None),
    ]
    assert (summary.rows, summary.duplicates, summary.kept["train"]) == (6, 3, 3)
    assert len({r.id for r in records}) == 3


def test_empty_and_unsplittable_rows_are_counted(tmp_path):
    prompts = [{"prompt": p} for p in ("ok", "", "   ", None, "fine")]
    records, summary = _read(write_prompts(prompts, tmp_path / "p", "jsonl"), fractions=ALL_TRAIN)
    assert len(records) == 2 and summary.empty == 3
    texts = [{"text": t} for t in ("two words", "single", "", "three more words")]
    records, summary = _read(write_prompts(texts, tmp_path / "t", "csv"), fractions=ALL_TRAIN)
    assert [r.text for r in records] == ["two", "three"]
    assert (summary.unsplittable, summary.empty) == (1, 1)


def test_prompts_over_a_models_context_are_dropped_and_counted_per_model(tmp_path):
    lengths = [3, 5, 8, 12]
    rows = [{"prompt": " ".join(["w"] * n), "tag": str(n)} for n in lengths]
    words = ContextLimit(lambda r: len(r.messages[0].content.split()), max_tokens=8)
    chars = ContextLimit(lambda r: len(r.messages[0].content), max_tokens=9)
    limits = {"teacher": words, "student": chars}
    records, summary = _read(
        write_prompts(rows, tmp_path / "p", "jsonl"), limits, fractions=ALL_TRAIN
    )
    assert [r.tag for r in records] == ["3", "5"]  # 5 words = 9 characters: at the limit, kept
    assert summary.too_long == 2
    assert summary.too_long_for == {"teacher": 1, "student": 2}
    assert summary.metrics()["data/too_long_for/student"] == 2


def test_max_prompts_caps_each_split_and_stops_reading_when_all_are_full(tmp_path):
    rows = [{"prompt": f"p{i}"} for i in range(1000)]
    path = write_prompts(rows, tmp_path / "p", "parquet")
    limits = {"train": 10, "validation": 3, "test": 2}
    _, summary = _read(path, max_prompts=limits, batch_rows=16)
    assert summary.kept == limits
    assert summary.rows < 1000 and summary.over_limit == summary.rows - 15
    _, summary = _read(path, max_prompts={"train": 10})
    assert summary.kept["train"] == 10 and summary.rows == 1000


def test_a_split_left_empty_after_filtering_is_a_one_line_error(tmp_path):
    rows = [{"prompt": "same"}] * 3 + [{"prompt": "far too long " * 20}]
    path = write_prompts(rows, tmp_path / "p", "jsonl")
    limits = {"student": ContextLimit(lambda r: len(r.messages[0].content), max_tokens=10)}
    with pytest.raises(UserError) as error:
        _read(path, limits, fractions={"validation": 0.0, "test": 0.5})
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("data: no ")
    assert "4 rows read" in message and "2 duplicates" in message
    assert "1 too long for student" in message


def test_summary_metrics_name_every_count(tmp_path):
    rows = [{"prompt": "a", "tag": "x"}, {"prompt": "a"}, {"prompt": "b", "tag": "y"}]
    _, summary = _read(write_prompts(rows, tmp_path / "p", "jsonl"), fractions=ALL_TRAIN)
    assert summary.metrics() == {
        "data/rows": 3,
        "data/empty": 0,
        "data/unsplittable": 0,
        "data/duplicates": 1,
        "data/over_limit": 0,
        "data/too_long": 0,
        "data/kept/train": 2,
        "data/layout/prompt": 2,
    }
    assert summary.tags == {("train", "x"): 1, ("train", "y"): 1}
