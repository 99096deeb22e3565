"""The load generator of the gateway benchmark (`benchmarks/gateway.py`): raw HTTP/1.1 on
keep-alive connections, so that the client costs as little as it can and reads each response's
overhead header itself.

    tally = asyncio.run(open_loop(target, rate=300, seconds=10))   # evenly spaced arrivals
    tally = asyncio.run(closed_loop(target, connections=64, seconds=10))   # saturation
    summary = measure(target, seconds=10)    # warm-up, one at a time, the rates, saturation

A request is sent at its scheduled time on an idle keep-alive connection or a new one, up to
`MAX_CONNECTIONS` at once (arrivals beyond that are counted as not sent); latency runs from the
scheduled time to the last byte.
"""

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

RATES = (100, 300, 1000)
SATURATION_CONNECTIONS = 64
MAX_CONNECTIONS = 256
# Longer than any phase takes to drain: a request the client gave up on would keep running in
# the server beyond the connection cap and slow the next phase.
REQUEST_TIMEOUT_S = 120
MAX_TOKENS = 16
RACE_REQUESTS = 200
RACE_AFFORDABLE = 20


@dataclass(frozen=True)
class Gateway:
    """A running gateway (or the upstream alone): where to send what."""

    port: int
    model: str
    key: str
    overhead_header: bytes | None


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


async def burst(port: int, request: bytes, count: int) -> list[int]:
    """`count` copies of `request` at once, each on a connection of its own: their statuses."""

    async def one() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        status, _ = await _exchange(reader, writer, request, None)
        writer.close()
        return status

    return await asyncio.gather(*(one() for _ in range(count)))
