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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import results_md

SECTION = "## Gateway (benchmarks/gateway.py)"
ROOT = Path(__file__).resolve().parent.parent
TESTS_SERVE = ROOT / "tests" / "serve"
LITELLM_VENV = ROOT / ".venv-litellm"
SECRET = "benchmark-server-secret-0123456789abcdef"
LITELLM_MASTER_KEY = "sk-benchmark-litellm-master-0123456789"
RATES = (100, 300, 1000)
SATURATION_CONNECTIONS = 64
MAX_CONNECTIONS = 256
# Longer than any phase takes to drain: a request the client gave up on would keep running in
# the server beyond the connection cap and slow the next phase.
REQUEST_TIMEOUT_S = 120
MAX_TOKENS = 16
RACE_REQUESTS = 200
RACE_AFFORDABLE = 20
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


@dataclass(frozen=True)
class Gateway:
    """A running gateway (or the upstream alone): where to send what."""

    port: int
    model: str
    key: str
    overhead_header: bytes | None


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


# --- the load generator -------------------------------------------------------------------------


def chat_request(gateway: Gateway) -> bytes:
    body = {
        "model": gateway.model,
        "messages": [{"role": "user", "content": "hello world"}],
        "max_tokens": MAX_TOKENS,
    }
    payload = json.dumps(body).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\n"
        f"Authorization: Bearer {gateway.key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def _exchange(
    reader, writer, request: bytes, header: bytes | None
) -> tuple[int, float | None]:  # type: ignore[no-untyped-def]
    """(status, the overhead header's value) of one request on a keep-alive connection."""
    writer.write(request)
    status_line = await reader.readline()
    length, overhead = 0, None
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == header:
            overhead = float(value)
    await reader.readexactly(length)
    return int(status_line.split()[1]), overhead


class Tally:
    """What the client saw in one phase."""

    def __init__(self) -> None:
        self.statuses: dict[str, int] = {}
        self.latency_ms: list[float] = []
        self.overhead_ms: list[float] = []
        self.not_sent = 0
        self.failed = 0  # connection errors and timeouts
        self.failures: dict[str, int] = {}  # their kinds

    def add(self, status: int, overhead: float | None, latency_s: float) -> None:
        self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
        if status == 200:
            self.latency_ms.append(latency_s * 1000)
            if overhead is not None:
                self.overhead_ms.append(overhead)

    @property
    def ok(self) -> int:
        return self.statuses.get("200", 0)

    def summary(self, seconds: float) -> dict[str, Any]:
        def pct(values: list[float], q: float) -> float | None:
            return float(np.percentile(values, q)) if values else None

        return {
            "achieved_per_s": self.ok / seconds,
            "ok": self.ok,
            "statuses": self.statuses,
            "not_sent": self.not_sent,
            "failed": self.failed,
            "failures": self.failures,
            "overhead_p50_ms": pct(self.overhead_ms, 50),
            "overhead_p95_ms": pct(self.overhead_ms, 95),
            "overhead_p99_ms": pct(self.overhead_ms, 99),
            "overhead_headers": len(self.overhead_ms),
            "latency_p50_ms": pct(self.latency_ms, 50),
            "latency_p99_ms": pct(self.latency_ms, 99),
        }


class Pool:
    """Keep-alive connections to one port; at most MAX_CONNECTIONS open at once. A connection
    idle for IDLE_S is closed rather than reused: the server may be closing it (uvicorn's
    keep-alive timeout is 5 s), and a request sent into that race fails for the client only."""

    IDLE_S = 4.0

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[tuple[Any, Any, float]] = []
        self.open = 0

    async def _connection(self) -> tuple[Any, Any]:
        while self.idle:
            reader, writer, since = self.idle.pop()
            if time.perf_counter() - since < self.IDLE_S:
                return reader, writer
            self.open -= 1
            writer.close()
        self.open += 1
        try:
            return await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            self.open -= 1
            raise

    async def send(self, request: bytes, header: bytes | None) -> tuple[int, float | None]:
        reader, writer = await self._connection()
        try:
            result = await _exchange(reader, writer, request, header)
        except BaseException:
            self.open -= 1
            writer.close()
            raise
        self.idle.append((reader, writer, time.perf_counter()))
        return result

    def close(self) -> None:
        for _, writer, _ in self.idle:
            writer.close()
        self.idle.clear()


async def _one(
    pool: Pool, request: bytes, header: bytes | None, scheduled: float, tally: Tally
) -> None:
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            status, overhead = await pool.send(request, header)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError) as error:
        tally.failed += 1
        kind = type(error).__name__
        tally.failures[kind] = tally.failures.get(kind, 0) + 1
        return
    tally.add(status, overhead, time.perf_counter() - scheduled)


async def open_loop(gateway: Gateway, rate: float, seconds: float) -> Tally:
    """Requests at `rate` per second, evenly spaced, for `seconds`; waits for the last."""
    pool, tally, request = Pool(gateway.port), Tally(), chat_request(gateway)
    tasks = set()
    start = time.perf_counter()
    for index in range(int(rate * seconds)):
        scheduled = start + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if pool.open >= MAX_CONNECTIONS and not pool.idle:
            tally.not_sent += 1
            continue
        task = asyncio.create_task(_one(pool, request, gateway.overhead_header, scheduled, tally))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks)
    pool.close()
    return tally


async def closed_loop(gateway: Gateway, connections: int, seconds: float) -> Tally:
    """`connections` clients, each sending its next request when its last is answered."""
    tally, request = Tally(), chat_request(gateway)
    end = time.perf_counter() + seconds

    async def client() -> None:
        pool = Pool(gateway.port)
        while (now := time.perf_counter()) < end:
            await _one(pool, request, gateway.overhead_header, now, tally)
        pool.close()

    await asyncio.gather(*(client() for _ in range(connections)))
    return tally


def measure(gateway: Gateway, seconds: float) -> dict[str, Any]:
    """Warm-up, the fixed rates, then the saturation point; and the 200s of all phases."""
    warm = asyncio.run(closed_loop(gateway, 8, 2.0))
    serial = asyncio.run(closed_loop(gateway, 1, seconds))
    one = {"connections": 1, **serial.summary(seconds)}
    print(f"  one at a time: {one}", flush=True)
    rates = []
    for rate in RATES:
        tally = asyncio.run(open_loop(gateway, rate, seconds))
        rates.append({"offered_per_s": rate, **tally.summary(seconds)})
        print(f"  {rate}/s: {rates[-1]}", flush=True)
    saturation = asyncio.run(closed_loop(gateway, SATURATION_CONNECTIONS, seconds))
    summary = {"connections": SATURATION_CONNECTIONS, **saturation.summary(seconds)}
    print(f"  saturation: {summary}", flush=True)
    ok = warm.ok + serial.ok + sum(r["ok"] for r in rates) + saturation.ok
    return {"serial": one, "rates": rates, "saturation": summary, "ok_responses": ok}


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


async def _burst(port: int, request: bytes, count: int) -> list[int]:
    async def one() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        status, _ = await _exchange(reader, writer, request, None)
        writer.close()
        return status

    return await asyncio.gather(*(one() for _ in range(count)))


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
        statuses = asyncio.run(_burst(gateway.port, chat_request(gateway), RACE_REQUESTS))
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


# --- results ------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _label(s: dict) -> str:
    if s["gateway"] == "polydistill":
        return f"polydistill, {s['database']}, {s['workers']} worker{'s' * (s['workers'] > 1)}"
    if s["gateway"] == "litellm":
        return f"LiteLLM, {s['workers']} worker{'s' * (s['workers'] > 1)}"
    return "upstream alone (mock, no gateway)"


def _load_table(scenarios: list[dict]) -> list[str]:
    lines = [
        "| scenario | offered req/s | achieved req/s | overhead p50 ms | p95 ms | p99 ms "
        "| latency p50 ms | p99 ms | not 200 | not sent | ledger rows = 200s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in scenarios:
        metered = "–"
        if "ledger_rows" in s:
            metered = f"{s['ledger_rows']} = {s['ok_responses']}" + (
                "" if s["ledger_rows"] == s["ok_responses"] else " ✗"
            )
        points = [("one at a time (1 conn)", s["serial"])]
        points += [(str(r["offered_per_s"]), r) for r in s["rates"]]
        points.append((f"saturation ({s['saturation']['connections']} conns)", s["saturation"]))
        for offered, r in points:
            bad = str(sum(n for code, n in r["statuses"].items() if code != "200") + r["failed"])
            kinds = {**{k: n for k, n in r["statuses"].items() if k != "200"}, **r["failures"]}
            if kinds:
                bad += " (" + ", ".join(f"{k} × {n}" for k, n in sorted(kinds.items())) + ")"
            lines.append(
                f"| {_label(s)} | {offered} | {r['achieved_per_s']:.0f} "
                f"| {_ms(r['overhead_p50_ms'])} | {_ms(r['overhead_p95_ms'])} "
                f"| {_ms(r['overhead_p99_ms'])} | {_ms(r['latency_p50_ms'])} "
                f"| {_ms(r['latency_p99_ms'])} | {bad} | {r['not_sent']} | {metered} |"
            )
    return lines


def _sustained(r: dict) -> bool:
    """The offered rate was served: nothing left unsent, 98 % of it answered with a 200."""
    return r["not_sent"] == 0 and r["achieved_per_s"] >= 0.98 * r["offered_per_s"]


def _sustained_line(scenarios: list[dict]) -> str:
    parts = []
    for s in scenarios:
        held = [str(r["offered_per_s"]) for r in s["rates"] if _sustained(r)]
        parts.append(f"{_label(s)}: {', '.join(held) if held else 'none'}")
    return (
        "Rates sustained (nothing unsent, at least 98 % answered with a 200; above them the "
        "overhead and latency are those of a queue): " + "; ".join(parts) + "."
    )


def _verdicts(scenarios: list[dict]) -> list[str]:
    """The target, checked against the data: lower overhead at every rate than LiteLLM with
    as many workers, and a higher saturation throughput."""
    lines = []
    for workers in (1, 2):
        rival = next((s for s in scenarios if s["gateway"] == "litellm"
                      and s["workers"] == workers), None)  # fmt: skip
        if rival is None:
            continue
        ours = [s for s in scenarios if s["gateway"] == "polydistill" and s["workers"] == workers]
        for s in ours:
            worse = []
            for mine, theirs in zip(s["rates"], rival["rates"], strict=True):
                for q in ("p50", "p95", "p99"):
                    a, b = mine[f"overhead_{q}_ms"], theirs[f"overhead_{q}_ms"]
                    if a is None or b is None or a >= b:
                        worse.append(f"{q} at {mine['offered_per_s']}/s")
            ratio = s["saturation"]["achieved_per_s"] / max(
                rival["saturation"]["achieved_per_s"], 1e-9
            )
            p99 = [
                f"{t['overhead_p99_ms'] / m['overhead_p99_ms']:.1f}×"
                if m["overhead_p99_ms"] and t["overhead_p99_ms"] else "–"
                for m, t in zip(s["rates"], rival["rates"], strict=True)
            ]  # fmt: skip
            lowest = "lower at every rate and percentile" if not worse else (
                "not lower at " + ", ".join(worse)
            )  # fmt: skip
            alone = f"{_ms(s['serial']['overhead_p50_ms'])}/{_ms(s['serial']['overhead_p99_ms'])}"
            theirs = f"{_ms(rival['serial']['overhead_p50_ms'])}/" + _ms(
                rival["serial"]["overhead_p99_ms"]
            )
            lines.append(
                f"- {_label(s)} against {_label(rival)}: one request at a time, overhead p50/p99 "
                f"{alone} ms against {theirs} ms; at the fixed rates {lowest}; LiteLLM's p99 "
                f"overhead ÷ polydistill's at {', '.join(map(str, RATES))} req/s: "
                f"{', '.join(p99)}; saturation {s['saturation']['achieved_per_s']:.0f} against "
                f"{rival['saturation']['achieved_per_s']:.0f} req/s ({ratio:.2f}×)."
            )
    return lines


def _metering_line(scenarios: list[dict]) -> str:
    ours = [s for s in scenarios if s["gateway"] == "polydistill"]
    exact = [s for s in ours if s["ledger_rows"] == s["ok_responses"]]
    spend = [s for s in ours if s["ledger_spend_micros"] == s["key_spent_micros"]]
    held = [s for s in ours if s["key_reserved_micros"] == 0]
    total = sum(s["ok_responses"] for s in ours)
    return (
        f"Metering: in {len(exact)} of {len(ours)} polydistill scenarios the usage ledger holds "
        f"one row per 200 response ({total} responses in all); the key's spend equals the "
        f"ledger's sum in {len(spend)} of {len(ours)}, and nothing stays reserved in "
        f"{len(held)} of {len(ours)}."
    )


def _race_table(races: list[dict]) -> list[str]:
    lines = [
        f"Budget race: {RACE_REQUESTS} concurrent requests, a budget for exactly "
        f"{RACE_AFFORDABLE} (money in micro-dollars).",
        "",
        "| database | workers | accepted | refused (429) | other | budget | accepted spend "
        "| key spent | still reserved | ledger rows |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in races:
        lines.append(
            f"| {r['database']} | {r['workers']} | {r['accepted']} | {r['refused_429']} "
            f"| {r['other']} | {r['budget_micros']} | {r['accepted_spend_micros']} "
            f"| {r['key_spent_micros']} | {r['key_reserved_micros']} | {r['ledger_rows']} |"
        )
    return lines


def _setup_lines(result: dict[str, Any]) -> list[str]:
    pg = result.get("postgresql")
    pg_text = (
        f"PostgreSQL {pg['server_version']} (a throwaway cluster on loopback, fsync "
        f"{pg['fsync']}, synchronous_commit {pg['synchronous_commit']})"
        if pg else "no PostgreSQL (binaries not found)"
    )  # fmt: skip
    published = result["litellm_published"]
    litellm_text = (
        "LiteLLM features on: " + "; ".join(result["litellm_features"]) + ". Off: "
        + "; ".join(result["litellm_off"]) + "."
        if result["litellm_ran"] else "LiteLLM did not run (`make install-litellm`)."
    )  # fmt: skip
    return [
        f"Non-streamed `/v1/chat/completions`, {MAX_TOKENS} tokens from an instant mock "
        f"upstream; one request at a time for {result['seconds']:g} s, then open loop at "
        f"{', '.join(map(str, RATES))} requests/s (evenly spaced, "
        f"{result['seconds']:g} s each, at most {MAX_CONNECTIONS} connections), then a closed "
        f"loop of {SATURATION_CONNECTIONS} connections for {result['seconds']:g} s (the "
        "saturation point). Overhead: the gateway's own header, total time inside it minus "
        "the upstream call (polydistill `x-polydistill-overhead-ms`, LiteLLM "
        "`x-litellm-overhead-duration-ms`), percentiles over the 200 responses. Latency: client "
        "side, from each request's scheduled time to its last byte. polydistill: metering and "
        f"budgets on (a price, a key with a budget, one ledger row per request), {pg_text} or "
        f"SQLite (WAL). {litellm_text}",
        "",
        f"LiteLLM publishes overhead p50/p95/p99 of {published['overhead_p50_ms']}/"
        f"{published['overhead_p95_ms']}/{published['overhead_p99_ms']} ms at about "
        f"{published['requests_per_s']} requests/s ({published['setup']}); the rows below "
        "measure both on this machine, where gateways, upstream and load generator share "
        f"{result['environment']['cores_usable']} cores.",
        "",
    ]


def markdown(result: dict[str, Any]) -> str:
    scenarios = result["scenarios"]
    lines = [SECTION, "", results_md.environment_lines(result).rstrip("\n"), ""]
    lines += _setup_lines(result)
    lines += _load_table(scenarios)
    lines += ["", _sustained_line(scenarios), "", *_verdicts(scenarios)]
    if any(s["gateway"] == "polydistill" for s in scenarios):
        lines += ["", _metering_line(scenarios)]
    lines += ["", *_race_table(result["budget_race"])]
    return "\n".join(lines) + "\n"


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
