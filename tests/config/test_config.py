"""Config parsing: typed, unknown keys rejected, one-line errors naming the key path."""

from pathlib import Path

import pytest
from repo_paths import ROOT, TESTS, TINY

from polydistill.config import apply_override, load_config
from polydistill.errors import UserError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


# Examples whose paths are the user's to fill in: loaded, with tiny checkpoints in their place,
# by the test named (a missing checkpoint is an error at loading, as it should be).
USER_PATHS = {"my-run.yaml": "test_real_run.py"}
# Examples whose files `make real-gemma` prepares in .cache/: loaded, with stand-ins for those
# files, by the test named.
PREPARED = {
    "real-gemma.yaml": "benchmarks/test_real_gemma_bench.py",
    "real-gemma-qwen.yaml": "benchmarks/test_real_gemma_bench.py",
}


def test_example_configs_parse():
    root = ROOT
    for path in [TINY, *sorted((root / "examples").glob("*.yaml"))]:
        if path.name in PREPARED:
            assert (TESTS / PREPARED[path.name]).is_file()
            continue
        if path.name in USER_PATHS:
            assert (TESTS / USER_PATHS[path.name]).is_file()
            with pytest.raises(UserError, match=r"teachers\[0\]\.path: no such directory"):
                load_config(path)
            continue
        assert load_config(path).teachers


def test_unknown_key_names_its_path(tmp_path):
    text = TINY.read_text().replace("lr: 1.0e-3, warmup_steps: 2}", "lr: 1.0e-3, warmup: 2}", 1)
    with pytest.raises(UserError, match=r"^teachers\[0\]\.train\.warmup: unknown key$"):
        load_config(write(tmp_path, text))


def test_wrong_type_names_its_path(tmp_path):
    with pytest.raises(UserError, match=r"^world\.domains\.facts\.entities: "):
        load_config(TINY, ["world.domains.facts.entities=many"])


def test_teacher_path_must_be_a_checkpoint(tmp_path):
    with pytest.raises(UserError, match=r"^teachers\[1\]\.path: no such directory: /nonexistent"):
        load_config(TINY, ["teachers[1].path=/nonexistent"])
    with pytest.raises(UserError, match=r"teachers\[1\]\.path: not a Hugging Face checkpoint"):
        load_config(TINY, [f"teachers[1].path={tmp_path}"])


def test_overrides_reach_nested_fields_and_lists():
    cfg = load_config(TINY, ["teachers[2].train.steps=7", "eval.heldout_limit=3", "world.seed=9"])
    assert cfg.teachers[2].train.steps == 7
    assert cfg.eval.heldout_limit == 3
    assert cfg.world.seed == 9
    averaged = load_config(TINY, ["teachers[0].train.ema_decay=0.99"]).teachers[0].train
    assert averaged.loop_arguments()["ema_decay"] == 0.99
    assert cfg.teachers[0].train.loop_arguments()["ema_decay"] is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("novalue", "expected key=value"),
        ("teachers[5].name=x", r"teachers\[5\] does not exist"),
        ("eval..x=1", "empty key part"),
        ("bogus=1", "^bogus: unknown key$"),
        ("teachers[0].train.ema_decay=1", r"teachers\[0\]\.train\.ema_decay.*less than 1"),
    ],
)
def test_bad_overrides(override, message):
    with pytest.raises(UserError, match=message):
        load_config(TINY, [override])


def test_apply_override_reads_yaml_scalars():
    raw: dict = {"a": {"b": [1, 2]}}
    apply_override(raw, "a.b[1]=3.5")
    apply_override(raw, "a.c=[x, y]")
    assert raw == {"a": {"b": [1, 3.5], "c": ["x", "y"]}}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"teachers: [", "malformed YAML"),
        (b"- 1\n- 2\n", "expected a mapping"),
        (b"teachers: []\n", r"^teachers: List should have at least 1 item"),
        (b"\xff\xfe bad", "not UTF-8"),
        (b"teachers:\n  - {name: a, family: llama, domains: [facts]}\n", r"teachers\[0\]\.family"),
        (b"teachers:\n  - {name: a, family: qwen}\n", "needs domains"),
        (
            b"teachers:\n  - {name: a, family: qwen, domains: [facts]}\n"
            b"  - {name: a, family: gemma, domains: [facts]}\n",
            "repeated: a",
        ),
    ],
)
def test_malformed_configs(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_config(tmp_path / "absent.yaml")


def test_a_runs_resolved_config_loads_again_the_same(tmp_path):
    """`config.yaml` as `polydistill run` writes it is a valid config, however strict the types."""
    import yaml

    overrides = ["student={teachers: [gemma, qwen]}", "student.train.lr=1e-5", "threads=1"]
    cfg = load_config(TINY, [*overrides, f"world.cache_dir={tmp_path}"])
    written = write(tmp_path, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    assert load_config(written) == cfg


def test_data_is_the_world_by_default_or_the_users_files(tmp_path):
    """`data:` picks its kind by `source`; the user's files keep their own errors and key paths;
    with files, the student's tags are not fixed by the config (they are read from the prompts)."""
    from polydistill.config import WorldData
    from polydistill.data import DataConfig

    with_student = ["student={teachers: [gemma, qwen]}"]
    world = load_config(TINY, with_student)
    assert isinstance(world.data, WorldData) and world.student.tags == ["facts", "strings"]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "hi", "reference": "hello", "tag": "greeting"}\n')
    files = load_config(TINY, [*with_student, f"data={{train: {prompts}}}"])
    assert isinstance(files.data, DataConfig) and files.data.train == [prompts]
    assert files.student.tags is None
    assert load_config(TINY, [*with_student, "data={source: world}"]).data == world.data
    for override, message in [
        ("data={source: files}", "data.source: Input should be 'world'"),
        ("data={train: /nonexistent.jsonl}", "data: train: no such file or folder"),
        (f"data={{train: {prompts}, trian: 1}}", "data.trian: unknown key"),
        (f"data={{train: {prompts}, batch_rows: true}}", "data.batch_rows: Input should be"),
        ("student.tags=[]", "student.tags: List should have at least 1 item"),
    ]:
        with pytest.raises(UserError) as error:
            load_config(TINY, [*with_student, override])
        assert str(error.value).startswith(message), override
