"""`teachers[].served` in a run config: exactly one of world / path / served, unknown keys and
credentials refused, the API key read from the variable the config names and never written;
`teacher_from_config` gives the configured teacher; lineage facts of a served teacher."""

import json
import re
from pathlib import Path

import pytest
from fake_vllm import fake_vllm

from polydistill.config import load_config
from polydistill.errors import UserError
from polydistill.lineage.facts import teacher_facts
from polydistill.teachers.checkpoint import load_checkpoint, load_tokenizer
from polydistill.teachers.from_config import teacher_fingerprint, teacher_from_config
from polydistill.teachers.local import LocalTeacher
from polydistill.teachers.served import ServedTeacher
from polydistill.world.build import world_key, world_teachers

TINY = Path(__file__).parents[1] / "tiny.yaml"
KEY = "sk-do-not-print-7f3a"
APACHE = "Apache License\nVersion 2.0, January 2004\nhttp://www.apache.org/licenses/"


def with_teacher(tmp_path: Path, entry: str) -> Path:
    """tiny.yaml with one more teacher, `entry` its YAML mapping's lines (indented 4)."""
    text = TINY.read_text().replace(
        "eval:", f"  - name: remote\n    family: qwen\n{entry}\neval:", 1
    )
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def served_yaml(tokenizer: Path, **extra: str) -> str:
    lines = [f"      tokenizer: {tokenizer}", *(f"      {k}: {v}" for k, v in extra.items())]
    return "    served:\n" + "\n".join(lines)


@pytest.fixture(scope="module")
def qwen_tokenizer_dir(tiny_world, tmp_path_factory) -> Path:
    """The qwen teacher's tokenizer alone in a folder, as a served model's would be."""
    out = tmp_path_factory.mktemp("tokenizer") / "qwen"
    load_tokenizer(tiny_world.teachers["qwen"], "qwen").save_pretrained(out)
    assert not (out / "config.json").exists()
    return out


@pytest.fixture(scope="module")
def keyed_fake(tiny_world):
    model, tokenizer = load_checkpoint(tiny_world.teachers["qwen"], "qwen")
    with fake_vllm(model, tokenizer, api_key=KEY, model_id="qwen") as server:
        yield server


def test_a_served_teacher_is_neither_world_nor_checkpoint(tmp_path, qwen_tokenizer_dir):
    cfg = load_config(with_teacher(tmp_path, served_yaml(qwen_tokenizer_dir)))
    remote = cfg.teachers[-1]
    assert remote.kind == "served" and remote.tokenizer_style is None
    assert remote.served.concurrency == 4 and remote.served.urls is None
    assert [t.name for t in world_teachers(cfg)] == ["gemma", "gptoss", "qwen"]
    # a served teacher changes nothing the world is built from
    assert world_key(cfg) == world_key(load_config(TINY))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("    path: {tiny}", r"a checkpoint \(path\) or servers \(served\), not both"),
        ("    tokenizer: qwen", r"a served model brings its own tokenizer"),
        ("    dtype: bfloat16", r"dtype is the server's to choose"),
    ],
)
def test_exactly_one_of_world_path_served(tmp_path, qwen_tokenizer_dir, tiny_world, extra, message):
    extra = extra.format(tiny=tiny_world.teachers["qwen"])
    entry = served_yaml(qwen_tokenizer_dir) + "\n" + extra
    with pytest.raises(UserError, match=rf"^teachers\[3\]: .*{message}"):
        load_config(with_teacher(tmp_path, entry))
    with pytest.raises(UserError, match=r"world teacher 'remote' needs domains .*or served"):
        load_config(with_teacher(tmp_path, "    model: {}"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"api_key": KEY}, r"served\.api_key: unknown key"),
        ({"urls": "[ftp://a:21]"}, r"served\.urls: .*'ftp://a:21' is not an http\(s\) URL"),
        ({"urls": f"['http://me:{KEY}@a:8000']"}, r"served\.urls: .*no credentials in a URL"),
        ({"urls": "[http://a:1, 'http://a:1/']"}, r"served\.urls: .*listed twice: http://a:1"),
        ({"api_key_env": "'MY KEY'"}, r"served\.api_key_env: .*pattern"),
        ({"concurrency": "0"}, r"served\.concurrency: .*greater than 0"),
        ({"retries": "'3'"}, r"served\.retries: .*valid integer"),
    ],
)
def test_bad_served_settings_are_one_line_and_never_echo_a_key(
    tmp_path, qwen_tokenizer_dir, extra, message
):
    with pytest.raises(UserError) as error:
        load_config(with_teacher(tmp_path, served_yaml(qwen_tokenizer_dir, **extra)))
    text = str(error.value)
    assert text.startswith("teachers[3].served.") and "\n" not in text
    assert re.search(message, text), text
    assert KEY not in text


def test_the_tokenizer_must_be_there(tmp_path):
    with pytest.raises(UserError, match=r"served\.tokenizer: .*no such directory"):
        load_config(with_teacher(tmp_path, served_yaml(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"served\.tokenizer: .*no tokenizer\.json"):
        load_config(with_teacher(tmp_path, served_yaml(tmp_path / "empty")))


def test_the_key_comes_from_the_named_variable_and_is_never_written(
    tmp_path, qwen_tokenizer_dir, keyed_fake, monkeypatch
):
    entry = served_yaml(
        qwen_tokenizer_dir, urls=f"[{keyed_fake.base_url}]", api_key_env="REMOTE_KEY", retries=1
    )
    cfg = load_config(with_teacher(tmp_path, entry))
    remote = cfg.teachers[-1]
    monkeypatch.delenv("REMOTE_KEY", raising=False)
    with pytest.raises(UserError, match=r"names REMOTE_KEY, which is not set"):
        teacher_from_config(remote, batch_size=4)
    monkeypatch.setenv("REMOTE_KEY", KEY[:-1])
    with pytest.raises(UserError, match="answered 401: bad key") as error:
        teacher_from_config(remote, batch_size=4)
    assert KEY[:-1] not in str(error.value)
    monkeypatch.setenv("REMOTE_KEY", KEY)
    teacher = teacher_from_config(remote, batch_size=4)
    try:
        assert isinstance(teacher, ServedTeacher) and teacher.model == "qwen"
        fingerprint = teacher.fingerprint()
        assert fingerprint == teacher_fingerprint(remote)
        written = [cfg.model_dump_json(), json.dumps(fingerprint), repr(teacher.__dict__)]
        assert not any(KEY in text for text in written)
        assert teacher.score(["7+35"], ["42"], top_k=3, temperature=1.0)[0].top_ids.shape[1] == 3
    finally:
        teacher.close()


def test_a_checkpoint_or_world_teacher_is_local(tiny_world):
    cfg = load_config(TINY)
    teacher = teacher_from_config(
        cfg.teachers[2], batch_size=4, checkpoint=tiny_world.teachers["qwen"]
    )
    assert isinstance(teacher, LocalTeacher) and teacher.path == tiny_world.teachers["qwen"]
    assert teacher_fingerprint(cfg.teachers[2], checkpoint=teacher.path) == teacher.fingerprint()


def test_a_served_teacher_s_licence_comes_from_its_tokenizer_folder(tmp_path, qwen_tokenizer_dir):
    def facts(folder: Path, licence: str = ""):
        cfg = load_config(with_teacher(tmp_path, served_yaml(folder) + licence))
        return teacher_facts(cfg.teachers[-1])

    with pytest.raises(UserError, match=rf"cannot determine the licence of {qwen_tokenizer_dir}"):
        facts(qwen_tokenizer_dir)
    declared = facts(qwen_tokenizer_dir, "\n    licence: {id: qwen-research}")
    assert (declared.licence.id, declared.licence_source) == ("qwen-research", "config")
    licensed = tmp_path / "licensed"
    licensed.mkdir()
    for file in qwen_tokenizer_dir.iterdir():
        (licensed / file.name).write_bytes(file.read_bytes())
    (licensed / "LICENSE").write_text(APACHE)
    found = facts(licensed)
    assert (found.licence.id, found.licence_source, found.publisher) == (
        "apache-2.0",
        "LICENSE",
        "Alibaba Cloud",
    )
