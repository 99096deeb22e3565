"""Every format x every layout reads back as the records its rows describe."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prompt_files import FORMATS, write_prompts

from polydistill.data import DataConfig, DataSummary, Turn, read_prompts
from polydistill.data.records import normalise
from polydistill.errors import UserError

ALL_TRAIN = {"validation": 0, "test": 0}

LAYOUTS = {
    "messages": (
        [
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "  Say hi\r\n"},
                    {"role": "assistant", "content": "Hi!"},
                ],
                "tag": "greet",
            },
            {
                "messages": [
                    {"role": "user", "content": "2+2?"},
                    {"role": "assistant", "content": "4"},
                    {"role": "user", "content": "and 3+3?"},
                ],
                "tag": None,
            },
        ],
        [
            ((Turn("system", "Be brief."), Turn("user", "Say hi")), None, "Hi!", "greet"),
            (
                (Turn("user", "2+2?"), Turn("assistant", "4"), Turn("user", "and 3+3?")),
                None,
                None,
                None,
            ),
        ],
    ),
    "prompt": (
        [
            {"prompt": "What is 7+8?", "completion": "15", "reference": None, "tag": "math"},
            {"prompt": "Capital of France?", "completion": "x", "reference": "Paris", "tag": "geo"},
            {"prompt": "Hello", "completion": None, "reference": None, "tag": None},
        ],
        [
            ((Turn("user", "What is 7+8?"),), None, "15", "math"),
            ((Turn("user", "Capital of France?"),), None, "Paris", "geo"),
            ((Turn("user", "Hello"),), None, None, None),
        ],
    ),
    "text": (
        [
            {"text": "The cat sat on the mat.", "tag": "story"},
            {"text": "one two  three\nfour five six seven", "tag": "count"},
        ],
        [
            (None, "The cat sat", " on the mat.", "story"),
            (None, "one two  three", "\nfour five six seven", "count"),
        ],
    ),
}


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_format_and_layout_round_trips(tmp_path, format, layout):
    rows, expected = LAYOUTS[layout]
    path = write_prompts(rows, tmp_path / "prompts", format)
    summary = DataSummary()
    records = list(read_prompts(DataConfig(train=path, fractions=ALL_TRAIN), summary=summary))
    assert [(r.messages, r.text, r.reference, r.tag) for r in records] == expected
    assert {r.layout for r in records} == {layout}
    assert all(r.completion_style == (layout == "text") for r in records)
    assert all(r.split == "train" for r in records)
    assert [r.origin.rsplit(" ", 1)[-1] for r in records] == [str(i + 1) for i in range(len(rows))]
    assert summary.kept == {"train": len(rows)} and summary.rows == len(rows)


def test_ids_are_the_prompt_alone_and_stable(tmp_path):
    """The same prompt has the same id in any format, layout or tag; another prompt another."""
    chat = write_prompts(
        [{"messages": [{"role": "user", "content": "Hello"}], "tag": "a"}], tmp_path / "c", "jsonl"
    )
    plain = write_prompts([{"prompt": " Hello ", "tag": "b"}], tmp_path / "p", "parquet")
    other = write_prompts([{"prompt": "Hello!"}], tmp_path / "o", "csv")
    ids = [
        next(iter(read_prompts(DataConfig(train=p, fractions=ALL_TRAIN)))).id
        for p in (chat, plain, other)
    ]
    assert ids[0] == ids[1] != ids[2]
    assert ids[0] == "7b874d7e1a39d460"  # fixed forever: ids key captured readings


def test_column_names_and_layout_are_configurable(tmp_path):
    rows = [{"question": "Why?", "answer": "Because.", "topic": "life", "body": "a b c d"}]
    path = write_prompts(rows, tmp_path / "qa", "parquet")
    columns = {"prompt": "question", "reference": "answer", "tag": "topic", "text": "body"}
    config = DataConfig(train=path, fractions=ALL_TRAIN, columns=columns)
    (record,) = read_prompts(config)
    assert (record.chat(), record.reference, record.tag) == (
        [{"role": "user", "content": "Why?"}],
        "Because.",
        "life",
    )
    (text,) = read_prompts(config.model_copy(update={"layout": "text"}))
    assert (text.text, text.reference, text.layout) == ("a b", " c d", "text")


def test_format_override_reads_a_file_whatever_its_suffix(tmp_path):
    path = write_prompts([{"prompt": "hi"}], tmp_path / "prompts", "jsonl")
    renamed = path.rename(tmp_path / "prompts.txt")
    (record,) = read_prompts(DataConfig(train=renamed, format="jsonl", fractions=ALL_TRAIN))
    assert record.messages == (Turn("user", "hi"),)


def test_a_csv_row_longer_than_a_read_block_is_read_whole(tmp_path):
    long = "word " * 60_000  # 300 kB: several of the reader's first blocks
    rows = [{"prompt": f"short {i}"} for i in range(3000)] + [{"prompt": long}, {"prompt": "end"}]
    path = write_prompts(rows, tmp_path / "p", "csv")
    records = list(read_prompts(DataConfig(train=path, fractions=ALL_TRAIN)))
    assert len(records) == 3002
    assert records[3000].messages[0].content == long.strip()
    assert records[3001].origin.endswith("row 3002")


@settings(max_examples=25, deadline=None)
@given(
    prompts=st.lists(st.text(max_size=30), min_size=1, max_size=8),
    format=st.sampled_from(["jsonl", "parquet", "csv"]),
)
def test_any_text_round_trips_normalised(tmp_path_factory, prompts, format):
    """Quotes, commas, newlines, tabs, surrogate-free Unicode: each prompt reads back as its
    normalised self, empty ones are counted, duplicates dropped."""
    path = write_prompts(
        [{"prompt": p} for p in prompts], tmp_path_factory.mktemp("t") / "p", format
    )
    summary = DataSummary()
    try:
        records = list(read_prompts(DataConfig(train=path, fractions=ALL_TRAIN), summary=summary))
    except UserError as error:
        assert "prompts left" in str(error)
        records = []
    kept = list(dict.fromkeys(normalise(p) for p in prompts if normalise(p)))
    assert [r.messages[0].content for r in records] == kept
    assert summary.empty == sum(not normalise(p) for p in prompts)
