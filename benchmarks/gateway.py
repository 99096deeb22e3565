"""What does the metered gateway add to each request, against LiteLLM's proxy in front of the
same upstream, and does its budget hold under a race?

    make install-litellm                      # LiteLLM's proxy in .venv-litellm (else skipped)
    python -m benchmarks.gateway              # 10 s per rate: benchmarks/results/gateway.json
    python -m benchmarks.gateway --seconds 3  # quicker

An instant mock upstream (`benchmarks/mock_upstream.py`: 16 tokens, answered at once) runs in
its own process. In front of it, each in its own processes on loopback ports:

- `polydistill`: `python -m polydistill.serve serve TINY --upstream MOCK --workers N`, with a
  price and a key with a budget (metering and budgets on: every request is reserved, settled
  and written to the usage ledger), on SQLite and on PostgreSQL (a throwaway cluster when the
  binaries exist), with 1 and 2 worker processes;
- `litellm`: `litellm --config CFG --num_workers N` from `.venv-litellm`, the mock as an
  `openai/` model, offline (`LITELLM_LOCAL_MODEL_COST_MAP=True`); the features that run are
  recorded in the JSON and the section;
- `upstream-alone`: the mock itself, the floor of the client's latency.

Every request is a non-streamed `POST /v1/chat/completions` (one user message, `max_tokens`
16; LiteLLM sends its overhead header on that route, not on `/v1/completions`). Each
scenario gets a warm-up, then open-loop load at fixed rates (arrivals evenly spaced, for
`--seconds` each, after one request at a time for `--seconds`, the overhead without a
queue; a request is sent at its time on an idle keep-alive connection or a new
one, up to 256 at once; arrivals beyond that are counted as not sent; the client never gives
up on a request within 120 s, so the server never holds more than 256), then a closed loop of
64 connections for `--seconds`, whose throughput is the saturation point. The client reads
each response's overhead header (`x-polydistill-overhead-ms`: time inside the gateway minus
the engine's, i.e. the upstream call's; `x-litellm-overhead-duration-ms`: LiteLLM's total
minus its upstream call) and measures latency from each request's scheduled time to its
last byte. Afterwards the gateway's usage ledger must hold exactly one row per 200 response
the client received for the scenario's key.

The budget race sends 200 concurrent requests (200 connections) for a key whose budget covers
exactly 20, to the gateway with 1 and 2 workers on each database, and records accepted
spend against the budget and ledger rows against successful responses.

Gateways, upstream and load generator share the machine's cores (2 here), with other work.
The load generator is `benchmarks/http_load.py`; the RESULTS.md section is rendered by
`benchmarks/gateway_report.py`.
"""

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks import results_md
from benchmarks.gateway_report import markdown  # noqa: F401  (results_md renders through it)
from benchmarks.http_load import (
    MAX_TOKENS,
    RACE_AFFORDABLE,
    RACE_REQUESTS,
    RATES,
    Gateway,
    burst,
    chat_request,
    measure,
)

ROOT = Path(__file__).resolve().parent.parent
TESTS_SERVE = ROOT / "tests" / "serve"
LITELLM_VENV = ROOT / ".venv-litellm"
SECRET = "benchmark-server-secret-0123456789abcdef"
LITELLM_MASTER_KEY = "sk-benchmark-litellm-master-0123456789"
PRICE_USD_PER_MILLION = ("1", "2")  # input, output
KEY_BUDGET_MICROS = 10**12  # large: checked on every request, never reached here
HEADERS = {
    "polydistill": b"x-polydistill-overhead-ms",
    "litellm": b"x-litellm-overhead-duration-ms",
}
# LiteLLM's published figure this is compared with (docs.litellm.ai, "Benchmarks").
LITELLM_PUBLISHED = {
    "overhead_p50_ms": 12, "overhead_p95_ms": 29, "overhead_p99_ms": 43,
    "requests_per_s": 1000, "setup": "2 instances, PostgreSQL, mock upstream",
}  # fmt: skip
LITELLM_FEATURES = [
    "master-key authentication on every request",
    "router with one deployment (the mock as `openai/mock`, through LiteLLM's OpenAI client)",
    "cost per request (prices set on the deployment) and the overhead/cost response headers",
    "a global budget (`litellm_settings.max_budget`), checked in process",
    "its default logging, without the uvicorn access log (polydistill writes none either)",
]
LITELLM_OFF = [
    "virtual keys, per-key budgets and spend logs: they need LiteLLM's database (PostgreSQL "
    "through prisma, whose engines are downloaded at first use, out of reach offline)",
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _free_ports(count: int) -> int:
    """The first of `count` consecutive free ports (for the workers' admin ports)."""
    while True:
        first = _free_port()
        try:
            for port in range(first, first + count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue


# --- processes ----------------------------------------------------------------------------------


def _wait_http(port: int, path: str, process: subprocess.Popen, timeout_s: float = 180) -> None:
    """Until GET `path` on `port` answers 200 (the process must stay alive)."""
    deadline = time.monotonic() + timeout_s
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    while True:
        assert process.poll() is None, f"the server on port {port} died"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
                conn.sendall(request)
                if conn.recv(64).split(b" ")[1:2] == [b"200"]:
                    return
        except (OSError, IndexError):
            pass
        assert time.monotonic() < deadline, f"the server on port {port} did not start"
        time.sleep(0.3)


@contextmanager
def _process(command: list[str], env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen]:
    log = open(cwd / f"{Path(command[0]).name}-{time.time_ns()}.log", "w")  # noqa: SIM115
    # A session of its own, so that its workers are stopped with it, whatever it does.
    process = subprocess.Popen(
        command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        yield process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # workers still draining
        process.wait()
        log.close()


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "POLYDISTILL_SERVER_SECRET": SECRET,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}",
    }


@contextmanager
def mock_upstream(work: Path) -> Iterator[int]:
    port = _free_port()
    command = [sys.executable, "-m", "benchmarks.mock_upstream", "--port", str(port)]
    with _process(command, _env(), work) as process:
        _wait_http(port, "/v1/models", process)
        yield port


@contextmanager
def polydistill(
    tiny_dir: Path, db: str, upstream_port: int, workers: int, key: str, work: Path
) -> Iterator[Gateway]:
    port, admin_port = _free_port(), _free_ports(workers)
    command = [
        sys.executable, "-m", "polydistill.serve", "serve", str(tiny_dir), "--db", db,
        "--upstream", f"http://127.0.0.1:{upstream_port}", "--upstream-model", "mock",
        "--price-input", PRICE_USD_PER_MILLION[0], "--price-output", PRICE_USD_PER_MILLION[1],
        "--port", str(port), "--admin-port", str(admin_port), "--workers", str(workers),
    ]  # fmt: skip
    with _process(command, _env(), work) as process:
        # With one worker the admin port answers before the API port listens.
        for health_port in (port, *range(admin_port, admin_port + workers)):
            _wait_http(health_port, "/health", process)
        yield Gateway(port, tiny_dir.name, key, HEADERS["polydistill"])


def _litellm_config(upstream_port: int) -> dict[str, Any]:
    price_in, price_out = (float(p) / 1e6 for p in PRICE_USD_PER_MILLION)
    deployment = {
        "model": "openai/mock",
        "api_base": f"http://127.0.0.1:{upstream_port}/v1",
        "api_key": "sk-mock-upstream",
        "input_cost_per_token": price_in,
        "output_cost_per_token": price_out,
    }
    return {
        "model_list": [{"model_name": "mock", "litellm_params": deployment}],
        "litellm_settings": {"max_budget": 1e6, "telemetry": False},
        "general_settings": {"master_key": LITELLM_MASTER_KEY},
    }


@contextmanager
def litellm(upstream_port: int, workers: int, work: Path) -> Iterator[Gateway]:
    port = _free_port()
    config = work / "litellm.json"
    config.write_text(json.dumps(_litellm_config(upstream_port)))  # YAML is a superset of JSON
    # No access log line per request, as polydistill writes none.
    log_config = work / "litellm-logging.json"
    quiet = {"level": "WARNING"}
    log_config.write_text(json.dumps({"version": 1, "disable_existing_loggers": False,
                                      "loggers": {"uvicorn.access": quiet}}))  # fmt: skip
    # Its workers import for longer than uvicorn's default health check allows on busy cores.
    command = [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(config), "--host",
               "127.0.0.1", "--port", str(port), "--num_workers", str(workers),
               "--log_config", str(log_config), "--timeout_worker_healthcheck", "300"]  # fmt: skip
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    with _process(command, env, work) as process:
        _wait_http(port, "/health/liveliness", process)
        yield Gateway(port, "mock", LITELLM_MASTER_KEY, HEADERS["litellm"])


def litellm_version() -> str | None:
    python = LITELLM_VENV / "bin" / "python"
    if not python.exists():
        return None
    code = "import importlib.metadata as m; print(m.version('litellm'))"
    return subprocess.run([python, "-c", code], capture_output=True, text=True).stdout.strip()


# --- databases and keys ---------------------------------------------------------------------------


def _create_key(db: str, name: str, budget_micros: int) -> str:
    from polydistill.serve.metering.accounts import create_key
    from polydistill.serve.metering.storage import open_database

    engine = open_database(db)
    key = create_key(engine, SECRET.encode(), name, int(time.time() * 1000), budget_micros)
    engine.dispose()
    return key


def _ledger(db: str, name: str) -> tuple[list[dict], Any]:
    import sqlalchemy as sa

    from polydistill.serve.metering.ledger import usage_rows
    from polydistill.serve.metering.storage import api_keys, open_database

    engine = open_database(db)
    rows = [r for r in usage_rows(engine) if r["key_name"] == name]
    with engine.connect() as conn:
        account = conn.execute(sa.select(api_keys).where(api_keys.c.name == name)).one()
    engine.dispose()
    return rows, account


def _databases(work: Path) -> dict[str, str]:
    sys.path.insert(0, str(TESTS_SERVE))
    from serve_postgres import create_database, pg_admin_url

    databases = {"sqlite": f"sqlite:///{work / 'gateway.db'}"}
    admin = pg_admin_url()
    if admin is not None:
        databases["postgresql"] = create_database(admin)
    return databases


def _postgres_settings(url: str) -> dict[str, str]:
    import sqlalchemy as sa

    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as conn:
        found = {
            name: conn.exec_driver_sql(f"SHOW {name}").scalar()
            for name in ("server_version", "fsync", "synchronous_commit")
        }
    engine.dispose()
    return found


# --- scenarios ----------------------------------------------------------------------------------


def polydistill_scenario(
    tiny_dir: Path, db_name: str, db: str, workers: int, upstream_port: int, seconds: float,
    work: Path,
) -> dict[str, Any]:  # fmt: skip
    name = f"load-{db_name}-{workers}"
    key = _create_key(db, name, KEY_BUDGET_MICROS)
    print(f"polydistill {db_name} × {workers}", flush=True)
    with polydistill(tiny_dir, db, upstream_port, workers, key, work) as gateway:
        measured = measure(gateway, seconds)
    rows, account = _ledger(db, name)
    metered = {
        "ledger_rows": len(rows),
        "ledger_spend_micros": sum(r["cost_micros"] for r in rows),
        "key_spent_micros": account.spent_micros,
        "key_reserved_micros": account.reserved_micros,
    }
    return {"gateway": "polydistill", "database": db_name, "workers": workers,
            **measured, **metered}  # fmt: skip


def litellm_scenario(upstream_port: int, workers: int, seconds: float, work: Path) -> dict:
    print(f"litellm × {workers}", flush=True)
    with litellm(upstream_port, workers, work) as gateway:
        measured = measure(gateway, seconds)
    return {"gateway": "litellm", "database": None, "workers": workers, **measured}


def upstream_scenario(upstream_port: int, seconds: float) -> dict[str, Any]:
    print("upstream alone", flush=True)
    gateway = Gateway(upstream_port, "mock", "none", None)
    return {"gateway": "upstream-alone", "database": None, "workers": 1,
            **measure(gateway, seconds)}  # fmt: skip


def budget_race(
    tiny_dir: Path, db_name: str, db: str, workers: int, upstream_port: int, work: Path
) -> dict[str, Any]:
    from polydistill.serve.core.served_model import load_served_model
    from polydistill.serve.metering.money import Price, request_cost
    from polydistill.serve.routes.chat.protocol import ChatMessage
    from polydistill.serve.routes.chat.serving import chat_prompt_ids

    served = load_served_model(tiny_dir)
    prompt_tokens = len(chat_prompt_ids(served, [ChatMessage(role="user", content="hello world")]))
    price = Price(*(int(p) * 1_000_000 for p in PRICE_USD_PER_MILLION))
    per_request = request_cost(price, prompt_tokens, MAX_TOKENS)
    budget = RACE_AFFORDABLE * per_request
    name = f"race-{db_name}-{workers}"
    key = _create_key(db, name, budget)
    with polydistill(tiny_dir, db, upstream_port, workers, key, work) as gateway:
        statuses = asyncio.run(burst(gateway.port, chat_request(gateway), RACE_REQUESTS))
    rows, account = _ledger(db, name)
    return {
        "database": db_name,
        "workers": workers,
        "requests": RACE_REQUESTS,
        "budget_micros": budget,
        "accepted": statuses.count(200),
        "refused_429": statuses.count(429),
        "other": len(statuses) - statuses.count(200) - statuses.count(429),
        "accepted_spend_micros": sum(r["cost_micros"] for r in rows),
        "key_spent_micros": account.spent_micros,
        "key_reserved_micros": account.reserved_micros,
        "ledger_rows": len(rows),
    }


def run(seconds: float, with_litellm: bool) -> dict[str, Any]:
    os.environ["POLYDISTILL_SERVER_SECRET"] = SECRET
    sys.path.insert(0, str(TESTS_SERVE))
    from serve_fixtures import build_tiny_chat_model

    scenarios, races, postgres = [], [], None
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        work = Path(tmp)
        tiny_dir = build_tiny_chat_model(work / "tiny-student")
        databases = _databases(work)
        if "postgresql" in databases:
            postgres = _postgres_settings(databases["postgresql"])
        with mock_upstream(work) as upstream_port:
            scenarios.append(upstream_scenario(upstream_port, seconds))
            for db_name, db in databases.items():
                for workers in (1, 2):
                    scenarios.append(polydistill_scenario(
                        tiny_dir, db_name, db, workers, upstream_port, seconds, work))  # fmt: skip
            if with_litellm:
                for workers in (1, 2):
                    scenarios.append(litellm_scenario(upstream_port, workers, seconds, work))
            for db_name, db in databases.items():
                for workers in (1, 2):
                    races.append(budget_race(tiny_dir, db_name, db, workers, upstream_port, work))
                    print(races[-1], flush=True)
    return {"scenarios": scenarios, "budget_race": races, "postgresql": postgres}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per rate")
    parser.add_argument("--no-litellm", action="store_true", help="skip LiteLLM's proxy")
    parser.add_argument("--out", type=Path, help="write the JSON here instead")
    args = parser.parse_args(argv)
    command = "python -m benchmarks.gateway" + (
        f" --seconds {args.seconds:g}" if args.seconds != 10.0 else ""
    )
    with_litellm = not args.no_litellm and (LITELLM_VENV / "bin" / "litellm").exists()
    env = results_md.environment(
        ("fastapi", "uvicorn", "uvloop", "aiohttp", "sqlalchemy", "psycopg")
    )
    env["versions"]["litellm"] = litellm_version() if with_litellm else None
    result: dict[str, Any] = {"command": command, "environment": env, "seconds": args.seconds}
    result.update(run(args.seconds, with_litellm))
    result.update(
        litellm_ran=with_litellm, litellm_features=LITELLM_FEATURES, litellm_off=LITELLM_OFF,
        litellm_published=LITELLM_PUBLISHED, rates=list(RATES),
    )  # fmt: skip
    print(results_md.save("gateway", result, args.out))


if __name__ == "__main__":
    main()
