"""What does the metered gateway cost per request, and does its budget hold under a race?

    python -m benchmarks.gateway --json OUT.json              # 8 s per load scenario
    python -m benchmarks.gateway --json OUT.json --seconds 3  # quicker
    python -m benchmarks.gateway --json OUT.json --model-dir DIR  # end to end with DIR

Each scenario starts a server in its own process (uvicorn, one worker, uvloop and httptools)
on a loopback port and drives it from this process with 64 concurrent keep-alive connections
(a minimal asyncio HTTP/1.1 client, so that the load generator's own cost stays small) for a
bounded time, after a one-second warm-up. Every request is a non-streamed `/v1/completions`
of 16 tokens:

- `asgi-floor`: a bare ASGI app under uvicorn answering with a fixed JSON body of the same
  shape: the HTTP server's and this client's cost, nothing else;
- `fastapi-floor`: FastAPI answering the same with pydantic validation of the request (no
  key, no database, no engine): the web framework's cost;
- `gateway-fixed-sqlite` / `gateway-fixed-postgresql`: the gateway with the instant engine
  (`FixedEngine`): authentication, validation, tokenization, reservation, settlement and the
  ledger row, i.e. the gateway's whole overhead;
- `gateway-model-sqlite`: end to end with a model in process (`LocalEngine`, batches of up to
  8, one torch thread), answering a held-out arithmetic question through the chat route. The
  model is `--model-dir`, else the cached specialists world's `qwen` teacher (the
  multi-teacher student does not exist yet), else the tests' tiny random Qwen3.

The floors and the SQLite gateway also run with one client: the overhead without queueing.

Latency is measured by the client, from sending a request to its last byte; with 64 clients
in a closed loop it includes queueing in the server (latency ≈ clients / throughput). Server
and client share the machine's 2 cores, so the client's CPU is part of every scenario's
cost; both are measured (CPU seconds of each process over the measured window, divided by
the requests answered in it), which stays meaningful when other work shares the cores.

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

from benchmarks.results_md import machine, write_section

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


def _floor_body(model: str) -> dict:
    return {
        "id": "cmpl-floor", "object": "text_completion", "created": 0, "model": model,
        "choices": [
            {"index": 0, "text": " x" * MAX_TOKENS, "logprobs": None, "finish_reason": "length"}
        ],
        "usage": {"prompt_tokens": 2, "completion_tokens": MAX_TOKENS, "total_tokens": 18},
    }  # fmt: skip


def _asgi_floor_app(model: str) -> Any:
    body = json.dumps(_floor_body(model)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def _fastapi_floor_app() -> Any:
    from fastapi import FastAPI

    from polydistill.serve.protocol import CompletionRequest

    app = FastAPI()

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> dict:
        return _floor_body(body.model)

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

    if kind == "asgi-floor":
        app = _asgi_floor_app(model_dir.name)
    elif kind == "fastapi-floor":
        app = _fastapi_floor_app()
    else:
        app = _gateway_app(kind, model_dir, db)
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


def _request(port: int, key: str | None, body: dict, path: str = "/v1/completions") -> bytes:
    payload = json.dumps(body).encode()
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _load(
    port: int, server_pid: int, request: bytes, clients: int, seconds: float, warm_up_s: float
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

    async def cpu_over_window() -> tuple[float, float]:
        await asyncio.sleep(warm_end - time.perf_counter())
        server, own = _cpu_seconds(server_pid), time.process_time()
        await asyncio.sleep(end - time.perf_counter())
        return _cpu_seconds(server_pid) - server, time.process_time() - own

    window = asyncio.create_task(cpu_over_window())
    await asyncio.gather(*(client() for _ in range(clients)))
    server_cpu, client_cpu = await window
    ms = np.array(latencies) * 1000
    count = max(len(latencies), 1)
    return {
        "requests": len(latencies),
        "requests_per_s": len(latencies) / seconds,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
        "server_cpu_ms_per_request": server_cpu * 1000 / count,
        "client_cpu_ms_per_request": client_cpu * 1000 / count,
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


def _world_teacher() -> Path | None:
    """The newest cached specialists world's arithmetic teacher, if a world was built here."""
    worlds = TESTS_SERVE.parent.parent / ".cache" / "polydistill" / "worlds"
    found = sorted(worlds.glob("*/teachers/qwen/config.json"), key=lambda p: p.stat().st_mtime)
    return found[-1].parent if found else None


def _shown(path: Path) -> str:
    """`path` relative to the repository when it lies inside it."""
    try:
        return str(path.relative_to(TESTS_SERVE.parent.parent))
    except ValueError:
        return str(path)


def _model_request(port: int, key: str, model_dir: Path) -> bytes:
    """A held-out arithmetic question through the chat route (or the completions body for
    the tests' tiny model, which knows no task)."""
    questions = sorted(model_dir.parent.parent.glob("data/arithmetic.heldout.jsonl"))
    if not questions:
        body = {"model": model_dir.name, "prompt": "hello world", "max_tokens": MAX_TOKENS}
        return _request(port, key, body)
    question = json.loads(questions[0].read_text().splitlines()[0])["prompt"]
    messages = [{"role": "user", "content": question}]
    body = {"model": model_dir.name, "messages": messages, "max_tokens": MAX_TOKENS}
    return _request(port, key, body, "/v1/chat/completions")


def load_scenarios(
    tiny_dir: Path, model_dir: Path, databases: dict[str, str], seconds: float
) -> list[dict]:
    body = {"model": tiny_dir.name, "prompt": "hello world", "max_tokens": MAX_TOKENS}
    plans = [(floor, floor, "sqlite", clients) for floor in ("asgi-floor", "fastapi-floor")
             for clients in (CLIENTS, 1)]  # fmt: skip
    plans += [(f"gateway-fixed-{name}", "fixed", name, CLIENTS) for name in databases]
    plans += [("gateway-fixed-sqlite", "fixed", "sqlite", 1)]
    plans += [("gateway-model-sqlite", "model", "sqlite", CLIENTS)]
    records = []
    for label, kind, db_name, clients in plans:
        db = databases[db_name]
        key = _create_key(db, f"load-{len(records)}") if "floor" not in kind else None
        # The model needs longer: 64 requests of 16 tokens take seconds per round on the CPU.
        duration, warm_up = (seconds * 2, 5.0) if kind == "model" else (seconds, 1.0)
        served_dir = model_dir if kind == "model" else tiny_dir
        with Server(kind, served_dir, db) as server:
            if kind == "model":
                request = _model_request(server.port, key, served_dir)
            else:
                request = _request(server.port, key, body)
            pid = server.process.pid
            result = asyncio.run(_load(server.port, pid, request, clients, duration, warm_up))
        model = _shown(served_dir) if kind == "model" else None
        records.append(
            {"scenario": label, "clients": clients, "seconds": duration, "model": model, **result}
        )
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


def _overhead_lines(load: list[dict]) -> list[str]:
    def find(scenario: str, clients: int) -> dict:
        return next(r for r in load if r["scenario"] == scenario and r["clients"] == clients)

    bare, framework = find("asgi-floor", CLIENTS), find("fastapi-floor", CLIENTS)
    gateway, single = find("gateway-fixed-sqlite", CLIENTS), find("gateway-fixed-sqlite", 1)
    bare_single = find("asgi-floor", 1)
    server_extra = gateway["server_cpu_ms_per_request"] - bare["server_cpu_ms_per_request"]
    total = gateway["server_cpu_ms_per_request"] + gateway["client_cpu_ms_per_request"]
    return [
        "Gateway overhead (instant engine, SQLite), against the bare ASGI app in this run:",
        "",
        f"- server CPU per request: {gateway['server_cpu_ms_per_request']:.3f} ms against "
        f"{bare['server_cpu_ms_per_request']:.3f} ms (FastAPI floor "
        f"{framework['server_cpu_ms_per_request']:.3f} ms): the gateway adds "
        f"{server_extra:.3f} ms of CPU per request;",
        f"- one client: p50 {single['p50_ms']:.2f} ms against {bare_single['p50_ms']:.2f} ms "
        f"(+{single['p50_ms'] - bare_single['p50_ms']:.2f} ms), p99 {single['p99_ms']:.2f} ms "
        f"against {bare_single['p99_ms']:.2f} ms;",
        f"- {CLIENTS} clients: p99 {gateway['p99_ms']:.1f} ms against the bare app's own "
        f"{bare['p99_ms']:.1f} ms (ratio {gateway['p99_ms'] / bare['p99_ms']:.2f}); "
        f"{gateway['requests_per_s'] / bare['requests_per_s']:.2f}× the bare app's requests/s.",
        "",
        f"With {CLIENTS} clients in a closed loop every request waits for the others: latency "
        f"≈ {CLIENTS} / throughput. The server's event loop runs on one core, so a round of "
        f"{CLIENTS} gateway requests needs at least {CLIENTS} × "
        f"{gateway['server_cpu_ms_per_request']:.3f} ms = "
        f"{CLIENTS * gateway['server_cpu_ms_per_request']:.1f} ms of server CPU, and a p99 of "
        f"5 ms at {CLIENTS} clients would need at most 5 / {CLIENTS} = {5 / CLIENTS:.3f} ms of "
        f"server CPU per request, {5 / CLIENTS / bare['server_cpu_ms_per_request']:.1f}× what "
        f"the bare ASGI app spends, and the bare app itself reaches a p99 of "
        f"{bare['p99_ms']:.1f} ms here (server and client share the 2 cores with other work). "
        "The target is out of reach on this machine; the measure of the gateway's own cost is "
        "its CPU per request. Server and client together spend "
        f"{total:.3f} ms of CPU per gateway request.",
        "",
    ]


def section(load: list[dict], races: list[dict], command: str) -> str:
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    floors = {r["clients"]: r for r in load if r["scenario"] == "asgi-floor"}
    model = next((r["model"] for r in load if r["model"]), "–")
    if "/teachers/qwen" in model:
        model_text = (
            f"`{model}` (the specialists world's arithmetic teacher, standing in for the "
            "multi-teacher student, which does not exist yet) on a held-out question through "
            "`/v1/chat/completions`"
        )
    elif "tiny-student" in model:
        model_text = "the tests' tiny random Qwen3 (no world was cached), 'hello world'"
    else:
        model_text = f"`{model}` on a held-out question through `/v1/chat/completions`"
    lines = [
        SECTION, "",
        f"Command: `{command}`  ",
        f"Machine: {machine()} (Python {platform.python_version()}); server and load generator "
        "share the cores, and the cores were shared with other work during the run  ",
        f"Date: {date}", "",
        f"Non-streamed `/v1/completions` of {MAX_TOKENS} tokens, closed loop, one uvicorn worker "
        "(uvloop, httptools). Latency is client-side and includes queueing: with 64 clients it "
        "is about 64 / throughput. CPU ms per request: CPU time of the server process (all "
        "threads) and of the load generator over the measured window, divided by the requests "
        f"answered. `gateway-model-sqlite` runs {model_text} in process, at most 16 tokens.",
        "",
        "| scenario | clients | seconds | requests/s | p50 ms | p99 ms | server CPU ms/req "
        "| client CPU ms/req | req/s ÷ bare app's | p50 − bare app's p50, ms | statuses |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]  # fmt: skip
    for r in load:
        floor = floors[r["clients"]]
        lines.append(
            f"| {r['scenario']} | {r['clients']} | {r['seconds']:g} | {r['requests_per_s']:.0f} "
            f"| {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['server_cpu_ms_per_request']:.3f} "
            f"| {r['client_cpu_ms_per_request']:.3f} "
            f"| {r['requests_per_s'] / floor['requests_per_s']:.2f} "
            f"| {r['p50_ms'] - floor['p50_ms']:.2f} | {r['statuses']} |"
        )
    lines += ["", *_overhead_lines(load)]
    lines += [
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
    return "\n".join(lines) + "\n\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the records here")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured time per scenario")
    parser.add_argument("--model-dir", type=Path, help="the end-to-end model (a checkpoint)")
    parser.add_argument("--no-results-md", action="store_true", help="leave RESULTS.md alone")
    kinds = ["asgi-floor", "fastapi-floor", "fixed", "model"]
    parser.add_argument("--serve", choices=kinds, help=argparse.SUPPRESS)
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
        tiny_dir = build_tiny_chat_model(work / "tiny-student")
        model_dir = (args.model_dir or _world_teacher() or tiny_dir).resolve()
        databases = _databases(work)
        load = load_scenarios(tiny_dir, model_dir, databases, args.seconds)
        races = [budget_race(tiny_dir, db, name) for name, db in databases.items()]
    for race in races:
        print(race)
    Path(args.json).write_text(json.dumps({"load": load, "budget_race": races}, indent=1))
    if not args.no_results_md:
        command = "python -m benchmarks.gateway --json OUT.json"
        if args.seconds != 8.0:
            command += f" --seconds {args.seconds:g}"
        if args.model_dir:
            command += f" --model-dir {args.model_dir}"
        write_section(SECTION, section(load, races, command))


if __name__ == "__main__":
    main()
