"""The policy gate in a real run on the tiny world: a teacher the policy excludes is never loaded,
its readings are never captured, a store captured under another policy is refused before any
shard is opened, and the student's accounting has no share for it."""

import json
import sys
from pathlib import Path

import pytest

from polydistill import pipeline
from polydistill.lineage.signing import verify_lineage
from polydistill.store import cached
from polydistill.teachers import from_config as student

pytestmark = pytest.mark.slow
TINY = Path(__file__).parent.parent / "tiny.yaml"


@pytest.fixture
def loads(monkeypatch) -> list[str]:
    """Every teacher name whose weights a run loads (as a student's teacher or to evaluate)."""
    names: list[str] = []
    local_teacher, load_checkpoint = student.local_teacher, pipeline.load_checkpoint

    def recording_teacher(name, path, *args, **kwargs):
        names.append(name)
        return local_teacher(name, path, *args, **kwargs)

    def recording_checkpoint(path, who, *args, **kwargs):
        names.append(who)
        return load_checkpoint(path, who, *args, **kwargs)

    monkeypatch.setattr(student, "local_teacher", recording_teacher)
    monkeypatch.setattr(pipeline, "load_checkpoint", recording_checkpoint)
    return names


@pytest.fixture
def opened_shards(monkeypatch) -> list[Path]:
    paths: list[Path] = []
    read_shard = cached.read_shard

    def recording(path, *args, **kwargs):
        paths.append(path)
        return read_shard(path, *args, **kwargs)

    monkeypatch.setattr(cached, "read_shard", recording)
    return paths


def invoke(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    from polydistill.cli import main

    monkeypatch.setattr(sys, "argv", ["polydistill", *args])
    try:
        main()
        code = 0
    except SystemExit as exit:
        code = int(exit.code)
    return code, capsys.readouterr().err


def test_an_excluded_teacher_is_never_loaded_captured_or_read(
    tmp_path, tiny_cache, tiny_world, monkeypatch, capsys, loads, opened_shards
):
    policy = tmp_path / "no-cn.yaml"
    policy.write_text("name: no-cn\ndeny: {origin: [CN]}\non_violation: exclude\n")
    config = [
        str(TINY),
        f"world.cache_dir={tiny_cache}",
        "threads=1",
        "student.teachers=[gemma, gptoss, qwen]",
        "student.top_k=8",
        "student.prompts_per_tag=4",
        "student.train={steps: 2, batch_size: 4, warmup_steps: 0}",
        "student.model={hidden_size: 64, layers: 1, heads: 1, kv_heads: 1, intermediate_size: 64}",
        "eval.max_new_tokens=4",
    ]
    store = tmp_path / "store"
    code, err = invoke(
        monkeypatch, capsys, "capture", *config, f"policy={policy}", "--out", str(store)
    )
    assert code == 0, err
    assert loads == ["gemma", "gptoss"]
    manifest = json.loads((store / "manifest.json").read_text())
    assert list(manifest["teachers"]) == ["gemma", "gptoss"]
    assert manifest["policy"] is not None

    # the same store under no policy (or another one) is refused before a shard is opened
    opened_shards.clear()
    from_store = [*config, f"student.store={store}"]
    code, err = invoke(monkeypatch, capsys, "run", *from_store, "--out", str(tmp_path / "bad"))
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: store {store}: captured under policy {manifest['policy'][:12]}.., but the run is "
        "under no policy; capture again under it"
    ]
    assert opened_shards == []

    loads.clear()
    out = tmp_path / "run"
    code, err = invoke(
        monkeypatch, capsys, "run", *from_store, f"policy={policy}", "--out", str(out)
    )
    assert code == 0, err
    assert not any("qwen" in name for name in loads)  # neither evaluated nor read
    metrics = json.loads((out / "metrics.json").read_text())
    assert "teacher:qwen" not in metrics["models"] and "student" in metrics["models"]
    contributions = json.dumps(json.loads((out / "contributions.json").read_text()))
    assert "gemma" in contributions and "qwen" not in contributions
    # the student's signed lineage shows qwen excluded, at exactly zero, under the policy
    record = verify_lineage(out / "student")
    assert [t["name"] for t in record["teachers"]] == ["gemma", "gptoss"]
    assert record["excluded"] == [
        {"name": "qwen", "family": "qwen", "rule": "deny.origin lists CN (origin of the teacher)",
         "share": 0.0}
    ]  # fmt: skip
    assert record["policy"]["name"] == "no-cn" and record["policy"]["digest"] == manifest["policy"]
