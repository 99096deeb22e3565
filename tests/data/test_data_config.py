"""The `data:` section: every field documented where declared; the documented examples valid."""

import yaml

from polydistill.data import config as data_config
from polydistill.data.config import Columns, DataConfig, Fractions, SplitLimits, TextSplit


def test_every_field_is_documented():
    for model in (DataConfig, Columns, TextSplit, Fractions, SplitLimits):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no docstring"


def test_the_module_examples_validate(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("prompts.jsonl", "chats/train.parquet", "chats/validation.parquet"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).touch()
    (tmp_path / "chats/test.parquet").touch()
    examples = data_config.__doc__.split("\n\n")[1:3]
    one, named = (DataConfig.model_validate(yaml.safe_load(e)["data"]) for e in examples)
    assert one.carved() == {"validation": 0.05, "test": 0.05}
    assert named.carved() == {} and named.columns.prompt == "question"
