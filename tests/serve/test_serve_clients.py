"""Real clients against a real `polydistill serve` (a subprocess on a free loopback port):
the official `openai` package (completions, chat, streaming with usage, error types, its
retries on 429) and lm-evaluation-harness's `local-completions` model on a loglikelihood
task defined here, checked against the model's own scores. Then the usage export and a clean
SIGTERM shutdown that leaves no reservation behind."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
import sqlalchemy as sa
import torch
from live_gateway import create_key, wait_healthy
from typer.testing import CliRunner
from vllm_server import free_port

from polydistill.serve.commands import serve_app
from polydistill.serve.metering.storage import open_database, reservations

pytestmark = pytest.mark.slow
MC_QUESTIONS = [
    {"question": "The quick brown", "choices": [" fox", " dog", " cat"], "answer": 0},
    {"question": "A student model learns from", "choices": [" teachers", " fish"], "answer": 0},
    {
        "question": "Prices are counted in",
        "choices": [" integer", " floats", " words"],
        "answer": 0,
    },
    {"question": "def add(a, b):", "choices": ["\n    return a + b", " pass"], "answer": 0},
    {"question": "emoji", "choices": [" 🙂", " x"], "answer": 1},
    {"question": "Gemma, Qwen and", "choices": [" gpt-oss", " llama"], "answer": 0},
]


@pytest.fixture(scope="module")
def live(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("live")
    db = str(work / "gateway.db")
    config = work / "gateway.yaml"
    config.write_text(
        f"prices:\n  {tiny_model_dir.name}: {{input: '0.50', output: '1.50'}}\n"
        "rate_window_s: 1\ntorch_threads: 1\n"
    )
    keys = {
        "main": create_key(db, "--name", "main"),
        "limited": create_key(db, "--name", "limited", "--rpm", "1"),
        "broke": create_key(db, "--name", "broke", "--budget", "0.000001"),
        "elsewhere": create_key(db, "--name", "elsewhere", "--models", "another-model"),
    }
    port, admin_port = free_port(), free_port()
    command = [sys.executable, "-m", "polydistill.serve", "serve", str(tiny_model_dir),
               "--port", str(port), "--admin-port", str(admin_port), "--db", db,
               "--config", str(config)]  # fmt: skip
    log = (work / "server.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ)
    wait_healthy(server, port, work / "server.log")
    yield {"port": port, "admin_port": admin_port, "db": db, "keys": keys,
           "model": tiny_model_dir.name, "server": server, "log": work / "server.log"}  # fmt: skip
    if server.poll() is None:
        server.kill()


def _client(live, key: str = "main", **kwargs) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{live['port']}/v1", api_key=live["keys"][key], **kwargs
    )


def test_openai_client_completions_chat_and_streams(live, served) -> None:
    client, model = _client(live), live["model"]
    completion = client.completions.create(model=model, prompt="The quick", max_tokens=5, seed=1)
    assert completion.usage.prompt_tokens == len(served.encode("The quick"))
    assert (
        completion.usage.completion_tokens == 5 and completion.choices[0].finish_reason == "length"
    )
    chat = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_completion_tokens=4,
        logprobs=True, top_logprobs=3, temperature=0,
    )  # fmt: skip
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens and len(content[0].top_logprobs) == 3
    assert chat.usage.prompt_tokens == len(served.chat_prompt([{"role": "user", "content": "hi"}]))
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0,
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == chat.choices[0].message.content
    text_stream = client.completions.create(
        model=model, prompt=["The quick", "A"], max_tokens=3, n=2, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    parts = list(text_stream)
    assert parts[-1].usage.completion_tokens == 12
    assert {c.choices[0].index for c in parts if c.choices} == {0, 1, 2, 3}


def test_openai_error_types_and_retry_behaviour(live) -> None:
    model = live["model"]
    with pytest.raises(openai.AuthenticationError) as denied:
        openai.OpenAI(base_url=_client(live).base_url, api_key="pd_nope").models.list()
    assert denied.value.code == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as missing:
        _client(live).completions.create(model="gpt-17", prompt="x")
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as too_long:
        _client(live).completions.create(model=model, prompt="x", max_tokens=100_000)
    assert too_long.value.code == "context_length_exceeded" and too_long.value.param == "max_tokens"
    with pytest.raises(openai.PermissionDeniedError):
        _client(live, "elsewhere").completions.create(model=model, prompt="x")

    attempts: list[int] = []
    hooks = {"response": [lambda response: attempts.append(response.status_code)]}
    counting = httpx.Client(event_hooks=hooks)
    with pytest.raises(openai.RateLimitError) as broke:
        _client(live, "broke", http_client=counting, max_retries=3).completions.create(
            model=model, prompt="hello", max_tokens=5
        )
    assert broke.value.code == "insufficient_quota" and attempts == [429]  # never retried

    attempts.clear()
    limited = _client(live, "limited", http_client=counting, max_retries=4)
    # One request per 1-second window: back-to-back calls meet a 429, which the client
    # retries after retry-after-ms, so every call still succeeds.
    for _ in range(6):
        limited.completions.create(model=model, prompt="hello", max_tokens=2)
        if 429 in attempts:
            break
    assert 429 in attempts and attempts[-1] == 200


def _mc_task(directory: Path) -> Path:
    data = directory / "tiny_mc.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in MC_QUESTIONS))
    (directory / "tiny_mc.yaml").write_text(
        "task: polydistill_tiny_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{answer}}'\n"
        "target_delimiter: ''\n"
        "metric_list:\n  - metric: acc\n"
    )
    return directory


def _reference_accuracy(causal_lm, served) -> float:
    correct = 0
    for row in MC_QUESTIONS:
        context = served.encode(row["question"])
        scores = []
        for choice in row["choices"]:
            whole = served.encode(row["question"] + choice)
            with torch.no_grad():
                logprobs = torch.log_softmax(
                    causal_lm(torch.tensor([whole])).logits[0].double(), -1
                )
            scores.append(
                sum(float(logprobs[i - 1, whole[i]]) for i in range(len(context), len(whole)))
            )
        correct += int(max(range(len(scores)), key=scores.__getitem__) == row["answer"])
    return correct / len(MC_QUESTIONS)


def test_lm_eval_local_completions_loglikelihood(
    live, causal_lm, served, tmp_path, monkeypatch
) -> None:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("OPENAI_API_KEY", live["keys"]["main"])
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    base_url = f"http://127.0.0.1:{live['port']}/v1/completions"
    model_args = (
        f"model={live['model']},base_url={base_url},tokenized_requests=True,"
        f"tokenizer_backend=remote,auth_token={live['keys']['main']},max_length=256"
    )
    before = _ledger_count(live)
    results = simple_evaluate(
        model="local-completions",
        model_args=model_args,
        tasks=["polydistill_tiny_mc"],
        task_manager=TaskManager(include_path=str(_mc_task(tmp_path))),
        batch_size=4,
    )
    accuracy = results["results"]["polydistill_tiny_mc"]["acc,none"]
    assert accuracy == pytest.approx(_reference_accuracy(causal_lm, served))
    assert _ledger_count(live) > before


def _ledger_count(live) -> int:
    result = CliRunner().invoke(serve_app, ["usage", "--db", live["db"], "--format", "json"])
    assert result.exit_code == 0, result.output
    return len(result.output.splitlines())


def test_metrics_only_on_the_admin_port_then_usage_export_and_clean_shutdown(live) -> None:
    api = f"http://127.0.0.1:{live['port']}"
    admin = f"http://127.0.0.1:{live['admin_port']}"
    assert httpx.get(f"{api}/metrics").status_code == 404
    _client(live).completions.create(model=live["model"], prompt="hello", max_tokens=2)
    metrics = httpx.get(f"{admin}/metrics").text
    assert 'polydistill_requests_total{route="/v1/completions",status="200"}' in metrics
    assert "polydistill_billed_micros_total" in metrics

    events = CliRunner().invoke(serve_app, ["usage", "--db", live["db"], "--key", "main"])
    parsed = [json.loads(line) for line in events.output.splitlines()]
    assert parsed and {e["subject"] for e in parsed} == {"main"}
    assert all(e["type"] == "polydistill.usage.v1" and e["data"]["cost_micros"] > 0 for e in parsed)
    as_csv = CliRunner().invoke(serve_app, ["usage", "--db", live["db"], "--format", "csv"])
    assert as_csv.output.splitlines()[0].startswith("id,time,key,model")

    # A stream in flight when SIGTERM arrives: the gateway stops cleanly and holds nothing.
    with httpx.stream(
        "POST", f"{api}/v1/completions",
        json={"model": live["model"], "prompt": "x", "max_tokens": 200, "stream": True},
        headers={"Authorization": f"Bearer {live['keys']['main']}"},
    ) as response:  # fmt: skip
        lines = response.iter_lines()
        next(lines)
        live["server"].send_signal(signal.SIGTERM)
        rest = list(lines)
    assert rest  # the stream was finished or closed, not left hanging
    # uvicorn re-raises the signal after its graceful shutdown, hence -SIGTERM.
    assert live["server"].wait(timeout=60) in (0, -signal.SIGTERM), live["log"].read_text()
    with open_database(live["db"]).connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(reservations)).scalar() == 0
