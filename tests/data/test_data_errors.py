"""Every bad input is a one-line UserError naming the file and the line (or row), or the layouts
that were expected."""

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prompt_files import write_prompts
from pydantic import ValidationError

from polydistill.data import DataConfig, read_prompts
from polydistill.errors import UserError

ALL_TRAIN = {"validation": 0, "test": 0}


def _error(path, **config) -> str:
    with pytest.raises(UserError) as caught:
        list(read_prompts(DataConfig(train=path, fractions=ALL_TRAIN, **config)))
    message = str(caught.value)
    assert "\n" not in message and message.startswith("data: ")
    return message


def _jsonl(tmp_path, *lines: str):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _chat(*turns):
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in turns]})


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (['{"prompt": "a"}', "", '{"prompt": "b",}'], r"p\.jsonl line 3: malformed JSON"),
        (['[{"prompt": "a"}]'], r"line 1: a list, not a JSON object; JSONL holds one object"),
        (["[", '  {"prompt": "a"}', "]"], r"line 1: a JSON array, not JSON lines; write one"),
        (['{"prompt": "a"}', '{"question": "b"}'], r"line 2: no column 'prompt', which the file"),
        (['{"prompt": 7}'], r"line 1: 'prompt' holds int, expected text"),
        (['{"prompt": "a", "reference": ["x"]}'], r"line 1: 'reference' holds list"),
        (['{"prompt": "a", "tag": {"k": 1}}'], r"line 1: 'tag' holds dict"),
        (['{"messages": "hi"}'], r"line 1: column 'messages' is not a JSON list of turns"),
        (['{"messages": {"role": "user"}}'], r"line 1: column 'messages' holds dict, expected"),
        (['{"messages": ["hi"]}'], r"line 1: messages\[0\] is not a \{role, content\} mapping"),
        ([_chat(("user", "a"), ("tool", "b"))], r"messages\[1\]\.role is 'tool'; expected system"),
        ([_chat(("system", "s"))], r"line 1: 'messages' must end with a user turn"),
        ([_chat(("user", "a"), ("assistant", "b"), ("assistant", "c"))], r"must end with a user"),
        ([json.dumps({"messages": [{"role": "user", "content": None}]})], r"content' holds"),
    ],
)
def test_a_bad_jsonl_row_names_file_and_line(tmp_path, lines, expected):
    assert _match(_error(_jsonl(tmp_path, *lines)), expected)


def _match(message: str, expected: str) -> bool:
    assert re.search(expected, message), message
    return True


def test_a_line_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"prompt": "a"}\n{"prompt": "\xff"}\n')
    assert _match(_error(path), r"p\.jsonl line 2: not UTF-8 text")


def test_a_missing_column_names_the_expected_layouts_and_the_columns_found(tmp_path):
    path = write_prompts([{"question": "a", "answer": "b"}], tmp_path / "p", "parquet")
    message = _error(path)
    assert _match(
        message,
        r"p\.parquet row 1: no column of a known layout; expected 'messages' \(chat turns\), "
        r"'prompt' \(with optional 'completion' or 'reference'\) or 'text' \(split into prompt "
        r"and continuation\); the row has columns 'question', 'answer'; map yours in data.columns",
    )
    assert _match(_error(path, layout="text"), r"no column 'text', which layout text needs")


def test_a_bad_value_in_a_columnar_file_names_its_row(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b", None, "d"], "reference": [1, 2, 3, 4]}), path)
    assert _match(_error(path), r"p\.parquet row 1: 'reference' holds int, expected text")


def test_a_csv_row_with_the_wrong_number_of_fields_names_its_line(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('prompt,tag\n"two\nlines",a\nok,b\nbad,row,extra\n', encoding="utf-8")
    assert _match(_error(path), r"p\.csv line 5: 3 fields where the header has 2")
    path.write_bytes(b"prompt,tag\nok,a\n\xff\xfe,b\n")
    assert _match(_error(path), r"p\.csv line 3: not UTF-8 text")
    path.write_text("", encoding="utf-8")
    assert _match(_error(path), r"p\.csv line 1: no CSV header")
    path.write_text('messages\n"[{""role"": ""user""}]"\n', encoding="utf-8")
    assert _match(_error(path), r"p\.csv row 1: messages\[0\] is not a \{role, content\}")


def test_files_that_are_not_what_they_claim(tmp_path):
    bad = tmp_path / "p.parquet"
    bad.write_text("not parquet", encoding="utf-8")
    assert _match(_error(bad), r"p\.parquet: not a readable Parquet file")
    unknown = tmp_path / "p.txt"
    unknown.write_text("{}", encoding="utf-8")
    assert _match(_error(unknown), r"cannot tell the format of .*p\.txt from its suffix")
    folder = tmp_path / "folder"
    folder.mkdir()
    assert _match(_error(folder), r"folder is a folder but not one written by datasets")


def test_a_dataset_dict_folder_names_its_splits(tmp_path):
    import datasets

    splits = {name: datasets.Dataset.from_list([{"prompt": name}]) for name in ("train", "test")}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "dd"))
    message = _error(tmp_path / "dd")
    assert _match(message, r"dd holds a DatasetDict; name one of its splits' folders: .*dd/train")
    (record,) = read_prompts(DataConfig(train=tmp_path / "dd" / "test", fractions=ALL_TRAIN))
    assert record.messages[0].content == "test"


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"train": "nowhere.jsonl"}, r"train: no such file or folder: nowhere\.jsonl"),
        ({"train": [], "validation": []}, r"train\n.*at least 1 item"),
        ({"fractions": {"validation": 0.5, "test": 0.5}}, r"leave nothing for train"),
        ({"text_split": {"fraction": 1.0}}, r"less than 1"),
        ({"layout": "chat"}, r"'auto', 'messages', 'prompt' or 'text'"),
        ({"colums": {}}, r"colums\n.*Extra inputs are not permitted"),
        ({"max_prompts": {"train": 0}}, r"greater than 0"),
    ],
)
def test_config_mistakes_are_named(tmp_path, config, expected):
    path = write_prompts([{"prompt": "a"}], tmp_path / "p", "jsonl")
    with pytest.raises(ValidationError) as caught:
        DataConfig.model_validate({"train": str(path)} | config)
    assert _match(str(caught.value), expected)


def test_a_parquet_file_damaged_past_its_footer_is_named(tmp_path):
    path = write_prompts([{"prompt": f"p{i}" * 50} for i in range(2000)], tmp_path / "p", "parquet")
    data = bytearray(path.read_bytes())
    data[8:4000] = b"\x00" * 3992  # the first page, after the magic bytes; footer intact
    path.write_bytes(bytes(data))
    assert _match(_error(path), r"p\.parquet: not a readable Parquet file \(")
