"""`key=value` overrides and strict config types: every malformed override, and every value of
the wrong YAML type anywhere in the config, is one line naming it (exit code 2 from the CLI)."""

import os
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError
from repo_paths import TINY

from polydistill.config import RunConfig, Strict, load_config
from polydistill.errors import UserError
from polydistill.overrides import apply_override, read_yaml, split_key

WITH_STUDENT = [
    "student={teachers: [gemma, qwen], curriculum: {first: [facts], steps: 1}}",
    "student.fusion.strategy=fixed",
    "student.fusion.weights={gemma: 0.5, qwen: 0.5}",
    "benchmark.baselines=[single]",
]


def test_split_key_reads_names_and_indices():
    assert split_key("teachers[0].train.steps") == ["teachers", 0, "train", "steps"]
    assert split_key("a[1][12].b") == ["a", 1, 12, "b"]
    assert split_key("student.fusion.weights.gpt-oss_2") == [
        "student",
        "fusion",
        "weights",
        "gpt-oss_2",
    ]


def test_values_are_yaml_with_exponent_floats():
    assert (
        read_yaml("1e-3") == 0.001 and read_yaml("-2.5E4") == -25000.0 and read_yaml("5e4") == 5e4
    )
    assert read_yaml("12") == 12 and isinstance(read_yaml("12"), int)
    assert read_yaml("1_000") == 1000 and read_yaml("true") is True and read_yaml("e5") == "e5"
    raw: dict = {"a": {"b": [1, 2]}, "s": None}
    for override in ("a.b[1]=3.5", "a.c=[x, y]", "s.t={u: 1}", "a.d=", "a.e=x=y"):
        apply_override(raw, override)
    assert raw == {
        "a": {"b": [1, 3.5], "c": ["x", "y"], "d": None, "e": "x=y"},
        "s": {"t": {"u": 1}},
    }


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("eval.batch_size=[1", "the value is not valid YAML (expected ',' or ']'"),
        ("eval.batch_size={a: [}", "the value is not valid YAML"),
        ("eval.batch_size", "expected key=value"),
        ("=3", "expected key=value"),
        (" =3", "expected key=value"),
        ("eval..batch_size=1", "empty key part"),
        (".eval=1", "empty key part"),
        ("teachers[0]..name=x", "empty key part"),
        ("teachers[x].name=a", "bad index '[x]'"),
        ("teachers[-1].name=a", "bad index '[-1]'"),
        ("teachers[0.name=a", "bad index '[0'"),
        ("teachers[0]x.name=a", "bad index '[0]x'"),
        ("teachers[]=a", "bad index '[]'"),
        ("eval]=1", "']' without '['"),
        ("teachers[3].name=a", "teachers[3] does not exist"),
        ("eval[0]=1", "eval is not a list"),
        ("teachers.name=a", "teachers is a list; index it, e.g. teachers[0]"),
        ("eval.batch_size.x=1", "eval.batch_size is not a mapping"),
    ],
)
def test_malformed_overrides_name_the_override(override, message):
    with pytest.raises(UserError) as error:
        load_config(TINY, [override])
    assert str(error.value).startswith(f"override {override!r}: ")
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("bogus=1", "bogus: unknown key"),
        ("eval.bogus=1", "eval.bogus: unknown key"),
        ("teachers[0].train.bogus=1", "teachers[0].train.bogus: unknown key"),
        ("threads=true", "threads: Input should be a valid integer"),
        ("threads=1.0", "threads: Input should be a valid integer"),
        ("threads='2'", "threads: Input should be a valid integer"),
        ("world.seed=yes", "world.seed: Input should be a valid integer"),
        ("teachers[0].train.lr=false", "teachers[0].train.lr: Input should be a valid number"),
        ("teachers[0].name=7", "teachers[0].name: Input should be a valid string"),
        ("eval.batch_size=[1]", "eval.batch_size: Input should be a valid integer"),
    ],
)
def test_unknown_keys_and_wrong_types_name_the_key(override, message):
    with pytest.raises(UserError) as error:
        load_config(TINY, [override])
    assert str(error.value) == message


def test_numbers_in_exponent_notation_and_paths_from_text():
    cfg = load_config(TINY, ["teachers[0].train.lr=5e-4", "world.cache_dir=/tmp/w", "threads=2"])
    assert cfg.teachers[0].train.lr == 0.0005 and cfg.world.cache_dir == Path("/tmp/w")
    assert cfg.threads == 2


def _numeric_leaves(model: type[BaseModel], prefix: str) -> list[str]:
    """Key paths of every int or float field under `model` (lists entered at [0])."""
    leaves = []
    for name, field in model.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        for kind in _kinds(field.annotation):
            if kind in (int, float):
                leaves.append(path)
            elif isinstance(kind, type) and issubclass(kind, BaseModel):
                leaves += _numeric_leaves(kind, path)
            elif typing.get_origin(kind) is list:
                (item,) = typing.get_args(kind)
                if isinstance(item, type) and issubclass(item, BaseModel):
                    leaves += _numeric_leaves(item, f"{path}[0]")
    return sorted(set(leaves))


def _kinds(annotation) -> list:
    """The types a field may hold: unions unpacked, Annotated unwrapped, None left out."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return [k for arg in typing.get_args(annotation) for k in _kinds(arg)]
    if origin is typing.Annotated:
        return _kinds(typing.get_args(annotation)[0])
    return [] if annotation is type(None) else [annotation]


REQUIRED_FIRST = {
    "data.": [f"data.train={TINY}"],
    "student.init.prune.": [f"student.init.prune.teacher_path={TINY.parent}"],
}


def test_no_number_anywhere_in_the_config_is_taken_from_a_boolean(tmp_path):
    leaves = _numeric_leaves(RunConfig, "")
    assert {"threads", "world.seed", "teachers[0].train.lr", "student.fusion.temperature"} <= set(
        leaves
    )
    assert "student.curriculum.steps" in leaves and "eval.heldout_limit" in leaves
    assert "data.max_prompts.train" in leaves and "data.fractions.test" in leaves
    load_config(TINY, WITH_STUDENT)  # the base every leaf is set on is valid
    for leaf in leaves:
        for value in ("true", "false"):
            # a section's required keys first (the user's prompt files need a train file, a
            # pruned student its teacher), so the boolean is the first error
            needed = [o for part, os in REQUIRED_FIRST.items() if leaf.startswith(part) for o in os]
            if leaf.startswith("teachers[0].served."):  # a served teacher's tokenizer folder
                (tmp_path / "tokenizer.json").touch()
                needed.append(f"teachers[0].served.tokenizer={tmp_path}")
            with pytest.raises(UserError) as error:
                load_config(TINY, [*WITH_STUDENT, *needed, f"{leaf}={value}"])
            assert str(error.value).startswith(f"{leaf}: Input should be a valid "), leaf


def test_mappings_of_numbers_refuse_booleans_too():
    for override in (
        "student.prompts_per_tag={facts: true}",
        "student.fusion.weights={gemma: true, qwen: 0}",
    ):
        with pytest.raises(UserError, match=r"^student\.(prompts_per_tag|fusion\.weights)"):
            load_config(TINY, [*WITH_STUDENT, override])


def test_every_config_section_is_strict_about_booleans_and_numbers():
    """A boolean field of any section takes only true / false, never 1 or "yes"."""

    class Section(Strict):
        flag: bool = False
        count: int = 0

    assert Section.model_validate({"flag": True, "count": 3}).flag is True
    for bad in ({"flag": 1}, {"flag": "yes"}, {"flag": "true"}, {"count": True}, {"count": "3"}):
        with pytest.raises(ValidationError):
            Section.model_validate(bad)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("eval.batch_size=[1", "error: override 'eval.batch_size=[1': the value is not valid YAML"),
        ("threads=true", "error: threads: Input should be a valid integer"),
        ("teachers[0]train=1", "error: override 'teachers[0]train=1': bad index"),
        ("eval..x=1", "error: override 'eval..x=1': empty key part"),
        ("novalue", "error: override 'novalue': expected key=value"),
        ("eval.bogus=1", "error: eval.bogus: unknown key"),
        ("bogus=1", "error: bogus: unknown key"),
        ("eval.batch_size.x=1", "error: override 'eval.batch_size.x=1': eval.batch_size is not"),
    ],
)
def test_the_installed_command_prints_one_line_and_exits_2(tmp_path, override, message):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "polydistill",
            "run",
            str(TINY),
            "--out",
            str(tmp_path / "o"),
            override,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
    assert result.stdout == "" and list(tmp_path.iterdir()) == []
