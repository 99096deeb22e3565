"""What does the metered gateway cost per request, and does its budget hold under a race?

    python -m benchmarks.gateway --json OUT.json              # 8 s per load scenario
    python -m benchmarks.gateway --json OUT.json --seconds 3  # quicker

Each scenario starts a server in its own process (uvicorn, one worker) on a loopback port and
drives it from this process with 64 concurrent keep-alive connections (a minimal asyncio
HTTP/1.1 client, so that the load generator's own cost stays small) for a bounded time, after a
one-second warm-up. Every request is a non-streamed `/v1/completions` of 16 tokens:

- `http-floor`: FastAPI + uvicorn answering the same request shape with a fixed body, with
  pydantic validation and nothing else (no key, no database, no engine): the HTTP stack's cost;
- `gateway-fixed-sqlite` / `gateway-fixed-postgresql`: the gateway with the instant engine
  (`FixedEngine`): authentication, validation, tokenization, reservation, settlement and the
  ledger row, i.e. the gateway's whole overhead;
- `gateway-model-sqlite`: end to end with a model in process (`LocalEngine`, batches of up to 8,
  one torch thread). The model is the tests' tiny random Qwen3 checkpoint (2 layers, hidden
  128), standing in for the world student.

The floor and the SQLite gateway also run with one client: the overhead without queueing.

Latency is measured by the client, from sending a request to its last byte; with 64 clients
in a closed loop it includes queueing in the server (latency ≈ clients / throughput).

The budget race sends 200 concurrent requests (200 connections) to a gateway (instant engine)
for a key whose budget covers exactly 20, on SQLite and on PostgreSQL (a throwaway cluster
when the binaries exist), and records accepted spend against the budget and ledger rows
against successful responses.
"""

import argparse
import asyncio
import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.results_md import write_section

SECTION = "## Gateway (benchmarks/gateway.py)"
TESTS_SERVE = Path(__file__).resolve().parent.parent / "tests" / "serve"
SECRET = "benchmark-server-secret-0123456789abcdef"
CLIENTS = 64
RACE_REQUESTS = 200
RACE_AFFORDABLE = 20
MAX_TOKENS = 16


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- the servers, each run as `python -m benchmarks.gateway --serve KIND ...` -----------------


def _floor_app() -> Any:
    from fastapi import FastAPI

    from polydistill.serve.protocol import CompletionRequest

    app = FastAPI()
    text = " x" * MAX_TOKENS

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> dict:
        return {
            "id": "cmpl-floor", "object": "text_completion", "created": 0, "model": body.model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 2, "completion_tokens": MAX_TOKENS, "total_tokens": 18},
        }  # fmt: skip

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    return app


def _gateway_app(kind: str, model_dir: Path, db: str) -> Any:
    from polydistill.serve.app import create_app
    from polydistill.serve.assemble import open_gateway
    from polydistill.serve.fixed_engine import FixedEngine
    from polydistill.serve.money import Price
    from polydistill.serve.settings import GatewaySettings

    engine = FixedEngine() if kind == "fixed" else None
    price = Price(1_000_000, 2_000_000)
    # One torch thread: the load generator has the other core.
    settings = GatewaySettings(torch_threads=1)
    return create_app(open_gateway(model_dir, settings, db, price=price, engine=engine))


def serve(kind: str, model_dir: Path, db: str, port: int) -> None:
    import uvicorn

    app = _floor_app() if kind == "floor" else _gateway_app(kind, model_dir, db)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


class Server:
    """A benchmark server in a subprocess, stopped on exit from the `with` block."""

    def __init__(self, kind: str, model_dir: Path, db: str) -> None:
        self.port = _free_port()
        command = [sys.executable, "-m", "benchmarks.gateway", "--serve", kind,
                   "--model-dir", str(model_dir), "--db", db, "--port", str(self.port)]  # fmt: skip
        env = {**os.environ, "POLYDISTILL_SERVER_SECRET": SECRET, "HF_HUB_OFFLINE": "1"}
        self.process = subprocess.Popen(command, env=env)

    def __enter__(self) -> "Server":
        deadline = time.monotonic() + 120
        while True:
            assert self.process.poll() is None, "the benchmark server died"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                assert time.monotonic() < deadline, "the benchmark server did not start"
                time.sleep(0.2)

    def __exit__(self, *_: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


# --- the load generator -------------------------------------------------------------------------


async def _exchange(reader, writer, request: bytes) -> int:
    writer.write(request)
    status_line = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return int(status_line.split()[1])


def _request(port: int, key: str | None, body: dict) -> bytes:
    payload = json.dumps(body).encode()
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def _load(
    port: int, request: bytes, clients: int, seconds: float, warm_up_s: float
) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    warm_end = time.perf_counter() + warm_up_s
    end = warm_end + seconds

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while (now := time.perf_counter()) < end:
            status = await _exchange(reader, writer, request)
            if now >= warm_end:
                latencies.append(time.perf_counter() - now)
                statuses[status] = statuses.get(status, 0) + 1
        writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    ms = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "requests_per_s": len(latencies) / seconds,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
        "statuses": statuses,
    }


# --- scenarios ----------------------------------------------------------------------------------


def _create_key(db: str, name: str, budget_micros: int | None = None) -> str:
    from polydistill.serve.accounts import create_key
    from polydistill.serve.storage import open_database

    engine = open_database(db)
    key = create_key(engine, SECRET.encode(), name, int(time.time() * 1000), budget_micros)
    engine.dispose()
    return key


def _databases(work: Path) -> dict[str, str]:
    sys.path.insert(0, str(TESTS_SERVE))
    from serve_postgres import create_database, pg_admin_url

    databases = {"sqlite": f"sqlite:///{work / 'gateway.db'}"}
    admin = pg_admin_url()
    if admin is not None:
        databases["postgresql"] = create_database(admin)
    return databases


def load_scenarios(model_dir: Path, databases: dict[str, str], seconds: float) -> list[dict]:
    body = {"model": model_dir.name, "prompt": "hello world", "max_tokens": MAX_TOKENS}
    plans = [("http-floor", "floor", "sqlite", CLIENTS), ("http-floor", "floor", "sqlite", 1)]
    plans += [(f"gateway-fixed-{name}", "fixed", name, CLIENTS) for name in databases]
    plans += [("gateway-fixed-sqlite", "fixed", "sqlite", 1)]
    plans += [("gateway-model-sqlite", "model", "sqlite", CLIENTS)]
    records = []
    for label, kind, db_name, clients in plans:
        db = databases[db_name]
        key = _create_key(db, f"load-{len(records)}") if kind != "floor" else None
        # The model needs longer: 64 requests of 16 tokens take seconds per round on the CPU.
        duration, warm_up = (seconds * 2, 5.0) if kind == "model" else (seconds, 1.0)
        with Server(kind, model_dir, db) as server:
            request = _request(server.port, key, body)
            result = asyncio.run(_load(server.port, request, clients, duration, warm_up))
        records.append({"scenario": label, "clients": clients, "seconds": duration, **result})
        print(f"{label}: {result}", flush=True)
    return records


async def _burst(port: int, request: bytes, count: int) -> list[int]:
    async def one() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        status = await _exchange(reader, writer, request)
        writer.close()
        return status

    return await asyncio.gather(*(one() for _ in range(count)))


def budget_race(model_dir: Path, db: str, db_name: str) -> dict[str, Any]:
    import sqlalchemy as sa

    from polydistill.serve.checkpoint import load_served_model
    from polydistill.serve.ledger import usage_rows
    from polydistill.serve.money import Price, request_cost
    from polydistill.serve.storage import api_keys, open_database

    prompt_tokens = len(load_served_model(model_dir).encode("hello world"))
    per_request = request_cost(Price(1_000_000, 2_000_000), prompt_tokens, MAX_TOKENS)
    budget = RACE_AFFORDABLE * per_request
    name = f"race-{db_name}"
    key = _create_key(db, name, budget)
    body = {"model": model_dir.name, "prompt": "hello world", "max_tokens": MAX_TOKENS}
    with Server("fixed", model_dir, db) as server:
        statuses = asyncio.run(_burst(server.port, _request(server.port, key, body), RACE_REQUESTS))
    engine = open_database(db)
    rows = [r for r in usage_rows(engine) if r["key_name"] == name]
    with engine.connect() as conn:
        account = conn.execute(sa.select(api_keys).where(api_keys.c.name == name)).one()
    engine.dispose()
    return {
        "database": db_name,
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


# --- results ------------------------------------------------------------------------------------


def section(load: list[dict], races: list[dict], command: str) -> str:
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    floors = {r["clients"]: r for r in load if r["scenario"] == "http-floor"}
    lines = [
        SECTION, "",
        f"Command: `{command}`  ",
        f"Machine: 2-core CPU, 24 GiB, no GPU ({platform.machine()}, Python "
        f"{platform.python_version()}); server and load generator share the 2 cores  ",
        f"Date: {date}", "",
        f"Non-streamed `/v1/completions` of {MAX_TOKENS} tokens, closed loop, one uvicorn worker. "
        "Latency is client-side and includes queueing: with 64 clients it is about 64 / "
        "throughput. `gateway-model-sqlite` runs the tests' tiny random Qwen3 checkpoint "
        "(2 layers, hidden 128) in process, standing in for the world student.", "",
        "| scenario | clients | seconds | requests/s | p50 ms | p99 ms | req/s ÷ floor's "
        "| p50 − floor's p50, ms | statuses |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]  # fmt: skip
    for r in load:
        floor = floors[r["clients"]]
        lines.append(
            f"| {r['scenario']} | {r['clients']} | {r['seconds']:g} | {r['requests_per_s']:.0f} "
            f"| {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
            f"| {r['requests_per_s'] / floor['requests_per_s']:.2f} "
            f"| {r['p50_ms'] - floor['p50_ms']:.2f} | {r['statuses']} |"
        )
    lines += [
        "",
        f"Budget race: {RACE_REQUESTS} concurrent requests, a budget for exactly "
        f"{RACE_AFFORDABLE} (money in micro-dollars).",
        "",
        "| database | accepted | refused (429) | other | budget | accepted spend | key spent "
        "| still reserved | ledger rows |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in races:
        lines.append(
            f"| {r['database']} | {r['accepted']} | {r['refused_429']} | {r['other']} "
            f"| {r['budget_micros']} | {r['accepted_spend_micros']} | {r['key_spent_micros']} "
            f"| {r['key_reserved_micros']} | {r['ledger_rows']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the records here")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured time per scenario")
    parser.add_argument("--no-results-md", action="store_true", help="leave RESULTS.md alone")
    parser.add_argument("--serve", choices=["floor", "fixed", "model"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.model_dir, args.db, args.port)
        return
    if not args.json:
        parser.error("--json is required")
    os.environ["POLYDISTILL_SERVER_SECRET"] = SECRET
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(TESTS_SERVE))
    from serve_fixtures import build_tiny_chat_model

    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        work = Path(tmp)
        model_dir = build_tiny_chat_model(work / "tiny-student")
        databases = _databases(work)
        load = load_scenarios(model_dir, databases, args.seconds)
        races = [budget_race(model_dir, db, name) for name, db in databases.items()]
    for race in races:
        print(race)
    Path(args.json).write_text(json.dumps({"load": load, "budget_race": races}, indent=1))
    if not args.no_results_md:
        command = "python -m benchmarks.gateway --json OUT.json"
        if args.seconds != 8.0:
            command += f" --seconds {args.seconds:g}"
        write_section(SECTION, section(load, races, command))


if __name__ == "__main__":
    main()
