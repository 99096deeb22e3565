"""The product's main path end to end, as README.md gives it: `polydistill run` distils a
student from the tiny world's three teachers, `polydistill keys create` makes a key,
`polydistill serve RUN/student --port P --price-input 0.50 --price-output 1.50` serves it, and
the `openai` client buys a completion and a chat completion, streamed and not (and the README's
Python example runs as printed, but for the port and key). Usage is checked against the
student's own tokenizer and against the ledger (`polydistill usage --format csv`), the lineage
on `/v1/models` against the run's accounting; then a key is listed, rotated and revoked. Every
command runs through the `polydistill` entry point in a subprocess."""

import csv
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import openai
import pytest
from live_gateway import wait_healthy
from tiny_student import OVERRIDES
from transformers import AutoTokenizer

pytestmark = pytest.mark.slow
TINY = Path(__file__).parent / "tiny.yaml"
README = Path(__file__).parents[1] / "README.md"
# A student of all three teachers of the tiny world, a few seconds of training.
STUDENT = OVERRIDES
PRICE = (500_000, 1_500_000)  # --price-input 0.50 --price-output 1.50, micro-dollars per million


def polydistill(*args: object, check: bool = True) -> subprocess.CompletedProcess:
    """The `polydistill` command in a fresh process."""
    result = subprocess.run(
        [sys.executable, "-m", "polydistill", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=600,
    )
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def _port_pair() -> int:
    """A free loopback port P with P + 1 free too (serve's default admin port)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with socket.socket() as admin:
            try:
                admin.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two adjacent free ports")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_cache, tiny_world) -> Path:
    """`polydistill run` on the tiny world (built once per session by `tiny_world`)."""
    out = tmp_path_factory.mktemp("main-path") / "demo"
    polydistill("run", TINY, "--out", out, f"world.cache_dir={tiny_cache}", *STUDENT)
    return out


@pytest.fixture(scope="module")
def gateway(run_dir: Path):
    """A key made as the README makes it, then `polydistill serve RUN/student` on a free port."""
    db = run_dir / "student.gateway.db"  # serve's default database for RUN/student
    key = polydistill(
        "keys", "create", "--db", db, "--name", "alice", "--budget", "5.00", "--rpm", "60"
    ).stdout.strip()
    port = _port_pair()
    log_path = run_dir.parent / "serve.log"
    command = [sys.executable, "-m", "polydistill", "serve", str(run_dir / "student"),
               "--port", str(port), "--price-input", "0.50", "--price-output", "1.50"]  # fmt: skip
    with log_path.open("w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ)
    wait_healthy(server, port, log_path, timeout_s=180)
    yield {"port": port, "db": db, "key": key, "server": server, "log": log_path}
    server.send_signal(signal.SIGTERM)
    # uvicorn re-raises the signal after its graceful shutdown; `polydistill` exits 128 + signal.
    assert server.wait(timeout=60) == 128 + signal.SIGTERM, log_path.read_text()


def client(gateway: dict, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{gateway['port']}/v1",
        api_key=key or gateway["key"],
        max_retries=0,
    )


def test_the_run_writes_the_students_lineage_from_its_accounting(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"student", "teacher:gemma", "teacher:gptoss", "teacher:qwen"} == set(metrics["models"])
    accounts = json.loads((run_dir / "contributions.json").read_text())
    assert sum(accounts["share"].values()) == pytest.approx(1.0, abs=1e-5)
    lineage = json.loads((run_dir / "student" / "lineage.json").read_text())
    assert (lineage["format"], lineage["student"], lineage["strategy"]) == (
        "polydistill.lineage/2",
        "student",
        "evidence",
    )
    assert [(t["name"], t["family"], t["share"]) for t in lineage["teachers"]] == [
        ("gemma", "gemma", accounts["share"]["gemma"]),
        ("gptoss", "gpt-oss", accounts["share"]["gptoss"]),
        ("qwen", "qwen", accounts["share"]["qwen"]),
    ]
    # signed and bound to the weights the run saved, as `polydistill lineage verify` checks
    verify = subprocess.run(
        [sys.executable, "-m", "polydistill", "lineage", "verify", str(run_dir)],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stderr


def test_the_openai_client_buys_completions_and_streams_with_exact_usage(run_dir, gateway):
    api = client(gateway)
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "student")
    (card,) = api.models.list().data
    shares = json.loads((run_dir / "contributions.json").read_text())["share"]
    assert card.id == "student" and card.to_dict()["lineage"] == {
        "student": "student",
        "verified": True,  # the gateway checked the signature and the weights at start
        "strategy": "evidence",
        "teachers": ["gemma", "gptoss", "qwen"],
        "families": ["gemma", "gpt-oss", "qwen"],
        "shares": shares,
    }

    completion = api.completions.create(model="student", prompt="347+58", max_tokens=4)
    prompt_ids = tokenizer("347+58", add_special_tokens=False)["input_ids"]
    assert completion.usage.prompt_tokens == len(prompt_ids)
    assert 1 <= completion.usage.completion_tokens <= 4
    assert completion.usage.total_tokens == len(prompt_ids) + completion.usage.completion_tokens

    messages = [{"role": "user", "content": "347+58"}]
    reply = api.chat.completions.create(
        model="student", messages=messages, max_tokens=32, temperature=0
    )  # the README's example, greedy so that the stream below must say the same
    chat_text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    chat_ids = tokenizer(chat_text, add_special_tokens=False)["input_ids"]
    assert reply.usage.prompt_tokens == len(chat_ids)
    assert 1 <= reply.usage.completion_tokens <= 32
    if reply.choices[0].finish_reason == "length":
        assert reply.usage.completion_tokens == 32

    chunks = list(
        api.chat.completions.create(
            model="student", messages=messages, max_tokens=32, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    *deltas, last = chunks
    assert last.choices == [] and all(c.usage is None for c in deltas)
    assert last.usage.model_dump() == reply.usage.model_dump()
    streamed = "".join(c.choices[0].delta.content or "" for c in deltas if c.choices)
    assert streamed == reply.choices[0].message.content
    assert [c.choices[0].finish_reason for c in deltas if c.choices][-1] == (
        reply.choices[0].finish_reason
    )

    # The ledger, as `polydistill usage --format csv` exports it, bills exactly these figures.
    rows = list(csv.DictReader(io.StringIO(polydistill("usage", "--db", gateway["db"],
                                                       "--format", "csv").stdout)))  # fmt: skip
    rows = [r for r in rows if r["key"] == "alice"]  # other tests bill other keys
    billed = [(r["endpoint"], int(r["prompt_tokens"]), int(r["completion_tokens"])) for r in rows]
    usages = [completion.usage, reply.usage, last.usage]
    assert [b[1:] for b in billed] == [(u.prompt_tokens, u.completion_tokens) for u in usages]
    assert [r["streamed"] for r in rows] == ["False", "False", "True"]
    for row, usage in zip(rows, usages, strict=True):
        cost = -(-(usage.prompt_tokens * PRICE[0] + usage.completion_tokens * PRICE[1]) // 10**6)
        assert (row["key"], row["model"], int(row["cost_micros"])) == ("alice", "student", cost)
        assert row["cost_usd"] == f"0.{cost:06d}"


def test_a_key_is_listed_rotated_and_revoked_through_the_cli(gateway):
    db = gateway["db"]
    first = polydistill("keys", "create", "--db", db, "--name", "bob").stdout.strip()
    client(gateway, first).completions.create(model="student", prompt="ab", max_tokens=1)
    listed = {k["name"]: k for k in json.loads(polydistill("keys", "list", "--db", db,
                                                           "--format", "json").stdout)}  # fmt: skip
    assert listed["bob"]["status"] == "active" and listed["bob"]["spent_micros"] > 0
    assert listed["alice"]["budget_micros"] == 5_000_000
    assert first not in json.dumps(listed)

    second = polydistill("keys", "rotate", "--db", db, "--name", "bob").stdout.strip()
    assert second.startswith("pd_") and second != first
    for key in (first, second):  # the old key lasts the grace period (24 h by default)
        client(gateway, key).completions.create(model="student", prompt="ab", max_tokens=1)

    assert polydistill("keys", "revoke", "--db", db, "--name", "bob").stdout == "revoked bob\n"
    for key in (first, second):
        with pytest.raises(openai.AuthenticationError):
            client(gateway, key).completions.create(model="student", prompt="ab", max_tokens=1)
    again = polydistill("keys", "revoke", "--db", db, "--name", "bob", check=False)
    assert again.returncode == 2 and again.stderr == "error: the key 'bob' is revoked\n"
    log = gateway["log"].read_text()
    assert "serving student on" in log
    assert not [k for k in (first, second, gateway["key"]) if k in log or k[16:] in log]


def test_the_readme_python_example_runs_against_the_gateway(gateway, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    (example,) = [block for block in blocks if "OpenAI(" in block]
    key = polydistill("keys", "create", "--db", gateway["db"], "--name", "carol").stdout.strip()
    for shown, real in (
        ("http://127.0.0.1:8000/v1", f"http://127.0.0.1:{gateway['port']}/v1"),
        ("pd_3f9c0a1b2c4d_...", key),
    ):
        assert shown in example
        example = example.replace(shown, real)
    exec(compile(example, str(README), "exec"), {})
    printed = capsys.readouterr().out
    assert "CompletionUsage(completion_tokens=" in printed and "prompt_tokens=" in printed
