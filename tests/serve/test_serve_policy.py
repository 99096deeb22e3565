"""Several models behind one gateway, each key under its own lineage policy, with the
official `openai` client against a real `polydistill serve` (a subprocess on a free port).

Two tiny students are signed without training (`lineage.write.write_student_lineage` on a
tiny model): `student` learnt from gemma and qwen (Alibaba Cloud, origin CN), `student-no-qwen`
from gemma and gpt-oss. A `gov` key (policy: deny origin CN) sees only the Qwen-free model,
is refused the full one with a 403 naming the teacher and the rule (nothing billed), and is
served by the Qwen-free one; an unrestricted key sees both. The notices the gemma licence
requires are served and recorded in the usage export. A policy file with an unknown field,
and a tampered lineage on one of two models, are refused with one line and exit code 2."""

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
from live_gateway import create_key, wait_healthy
from typer.testing import CliRunner
from vllm_server import free_port

from polydistill.lineage.facts import TeacherFacts
from polydistill.lineage.licences import FAMILIES, GEMMA_NOTICE, LICENCES
from polydistill.lineage.policy import Gate
from polydistill.lineage.write import write_student_lineage
from polydistill.serve.commands import serve_app

pytestmark = pytest.mark.slow
GOV_POLICY = "name: gov\ndeny:\n  origin: [CN]\n"


def _facts(name: str, family: str) -> TeacherFacts:
    publisher, licence = FAMILIES[family]
    return TeacherFacts(
        name, family, publisher.name, publisher.origin, LICENCES[licence], "family table"
    )


def signed_student(tiny_model_dir: Path, out: Path, teachers: dict[str, str]) -> Path:
    """A copy of the tiny model with a signed lineage naming `teachers` (name: family)."""
    shutil.copytree(tiny_model_dir, out)
    facts = {name: _facts(name, family) for name, family in teachers.items()}
    gate = Gate(policy=None, facts=facts, excluded={}, config=None)  # type: ignore[arg-type]
    share = 1.0 / len(teachers)
    contributions = {
        "teachers": list(teachers),
        "share": dict.fromkeys(teachers, share),
        "strategy": "evidence",
    }
    write_student_lineage(
        gate, contributions, out, fingerprints={}, prompts={"count": 0}, config_sha256="0" * 64
    )
    return out


def _serve_command(db: str, port: int, *models: str) -> list[str]:
    return [sys.executable, "-m", "polydistill.serve", "serve", *models, "--port", str(port),
            "--admin-port", str(free_port()), "--db", db]  # fmt: skip


@pytest.fixture(scope="module")
def students(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("students")
    return {
        "student": signed_student(
            tiny_model_dir, work / "student", {"gemma": "gemma", "qwen": "qwen"}
        ),
        "student-no-qwen": signed_student(
            tiny_model_dir, work / "student-no-qwen", {"gemma": "gemma", "gptoss": "gpt-oss"}
        ),
    }


@pytest.fixture(scope="module")
def live(students: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("policy-gateway")
    db = str(work / "gateway.db")
    policy = work / "gov.yaml"
    policy.write_text(GOV_POLICY)
    keys = {
        "gov": create_key(db, "--name", "gov", "--policy", str(policy)),
        "open": create_key(db, "--name", "open"),
    }
    port = free_port()
    models = [f"{name}={path}" for name, path in students.items()]
    log = (work / "server.log").open("w")
    server = subprocess.Popen(
        _serve_command(db, port, *models), stdout=log, stderr=subprocess.STDOUT, env=os.environ
    )
    wait_healthy(server, port, work / "server.log")
    yield {"port": port, "db": db, "keys": keys}
    server.kill()
    server.wait(timeout=30)


def _client(live, key: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{live['port']}/v1", api_key=live["keys"][key], max_retries=0
    )


def _usage(db: str, output: str) -> str:
    result = CliRunner().invoke(serve_app, ["usage", "--db", db, "--format", output])
    assert result.exit_code == 0, result.output
    return result.output


def test_a_gov_key_sees_and_uses_only_the_qwen_free_student(live) -> None:
    gov, unrestricted = _client(live, "gov"), _client(live, "open")
    assert [m.id for m in gov.models.list()] == ["student-no-qwen"]
    assert sorted(m.id for m in unrestricted.models.list()) == ["student", "student-no-qwen"]
    with pytest.raises(openai.PermissionDeniedError) as refused:
        gov.completions.create(model="student", prompt="The quick", max_tokens=3)
    error = refused.value.body
    assert set(error) == {"message", "type", "param", "code"}, error
    assert "'qwen'" in error["message"] and "deny.origin lists CN" in error["message"]
    assert (error["param"], error["code"]) == ("model", "model_not_allowed")
    with pytest.raises(openai.PermissionDeniedError):
        gov.models.retrieve("student")
    served = gov.chat.completions.create(
        model="student-no-qwen", messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert served.model == "student-no-qwen" and served.usage.completion_tokens == 3
    both = unrestricted.completions.create(model="student", prompt="The quick", max_tokens=2)
    assert both.model == "student" and both.usage.completion_tokens == 2
    rows = list(csv.DictReader(io.StringIO(_usage(live["db"], "csv"))))
    # the refused request billed nothing: one row per served request, by key and model
    assert sorted((r["key"], r["model"]) for r in rows) == [
        ("gov", "student-no-qwen"),
        ("open", "student"),
    ]
    assert {r["notices"] for r in rows} == {"gemma"}  # gemma's terms ask a notice of both
    events = [json.loads(line) for line in _usage(live["db"], "json").splitlines()]
    assert {tuple(e["data"]["notices"]) for e in events} == {("gemma",)}


def test_each_model_serves_its_lineage_notices_and_use_restrictions(live) -> None:
    headers = {"Authorization": f"Bearer {live['keys']['open']}"}
    base = f"http://127.0.0.1:{live['port']}/v1/models"
    card = httpx.get(f"{base}/student", headers=headers).json()
    assert card["lineage"]["teachers"] == ["gemma", "qwen"] and card["lineage"]["verified"]
    gemma = next(n for n in card["notices"] if n["teacher"] == "gemma")
    assert gemma["licence"] == "gemma" and gemma["notice"] == GEMMA_NOTICE
    assert gemma["use_restrictions"].startswith("https://ai.google.dev/gemma/")
    assert [n["teacher"] for n in card["notices"]] == ["gemma"]  # qwen's Apache-2.0 asks none
    text = httpx.get(f"{base}/student-no-qwen/notices", headers=headers)
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
    assert GEMMA_NOTICE in text.text and "Teacher gemma" in text.text
    gov = {"Authorization": f"Bearer {live['keys']['gov']}"}
    assert httpx.get(f"{base}/student/notices", headers=gov).status_code == 403


def test_a_policy_file_with_unknown_fields_is_refused_at_keys_create(tmp_path: Path) -> None:
    policy = tmp_path / "bad.yaml"
    policy.write_text("name: gov\ndeny:\n  origins: [CN]\n")
    db = str(tmp_path / "gateway.db")
    command = [sys.executable, "-m", "polydistill.serve", "keys", "create", "--db", db,
               "--name", "gov", "--policy", str(policy)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    message = result.stderr.strip()
    assert "\n" not in message and not result.stdout, message
    assert "deny.origins" in message and "Extra inputs are not permitted" in message
    assert not Path(db).exists()  # refused before the database was opened


def _change_a_fact(model_dir: Path) -> None:
    record = json.loads((model_dir / "lineage.json").read_text())
    record["teachers"][1]["origin"] = "FR"  # a changed fact, under the old signature
    (model_dir / "lineage.json").write_text(json.dumps(record))


def _swap_the_weights(model_dir: Path) -> None:
    (weights,) = model_dir.glob("*.safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one parameter
    weights.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [(_change_a_fact, "tampered"), (_swap_the_weights, "the weights are not the ones")],
)
def test_a_tampered_lineage_on_one_of_two_models_stops_the_gateway(
    students: dict[str, Path], tmp_path: Path, tamper, expected: str
) -> None:
    tampered = tmp_path / "student-no-qwen"
    shutil.copytree(students["student-no-qwen"], tampered)
    tamper(tampered)
    models = [f"student={students['student']}", f"student-no-qwen={tampered}"]
    command = _serve_command(str(tmp_path / "gateway.db"), free_port(), *models)
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    message = result.stderr.strip()
    assert "\n" not in message and expected in message, message
    assert not (tmp_path / "gateway.db").exists()  # refused before anything was opened
