"""The `x-polydistill-overhead-ms` header: the gateway's own time, without the engine's."""

import asyncio
import time

from serve_harness import SERVER_SECRET, client_for, make_gateway

from polydistill.serve.core.gateway import Gateway
from polydistill.serve.core.overhead import OVERHEAD_HEADER, EngineClock
from polydistill.serve.engines.fixed import FixedEngine
from polydistill.serve.metering.accounts import create_key

NOW = 1_800_000_000_000
TOKENS = 4
DELAY_S = 0.05  # per token: the engine takes at least 0.2 s per sequence


def _timed_post(gateway: Gateway, path: str, body: dict) -> list[tuple[float, float, int]]:
    """(overhead header in ms, client-side total in ms, status) of the request, twice."""
    key = create_key(gateway.db, SERVER_SECRET, f"acme{time.time_ns()}", NOW, budget_micros=10**9)
    headers = {"Authorization": f"Bearer {key}"}

    async def go() -> list[tuple[float, float, int]]:
        seen = []
        async with client_for(gateway) as client:
            for _ in range(2):
                started = time.perf_counter()
                response = await client.post(path, json=body, headers=headers)
                total_ms = (time.perf_counter() - started) * 1000
                await response.aread()
                seen.append(
                    (float(response.headers[OVERHEAD_HEADER]), total_ms, response.status_code)
                )
        return seen

    return asyncio.run(go())


def test_the_header_excludes_the_engines_time(served, sqlite_url: str) -> None:
    gateway = make_gateway(served, FixedEngine(delay_s=DELAY_S), sqlite_url)
    body = {"model": served.model_id, "prompt": "hello", "max_tokens": TOKENS}
    for overhead, total, status in _timed_post(gateway, "/v1/completions", body):
        assert status == 200
        assert 0 <= overhead < total - TOKENS * DELAY_S * 1000
    chat = {"model": served.model_id, "messages": [{"role": "user", "content": "hi"}]}
    for overhead, total, status in _timed_post(gateway, "/v1/chat/completions", chat):
        assert status == 200 and 0 <= overhead < total


def test_concurrent_choices_count_the_engine_once(served, sqlite_url: str) -> None:
    """n = 3 sequences wait at the same time: their engine time overlaps and is not counted
    three times (which would drive the overhead to zero)."""
    gateway = make_gateway(served, FixedEngine(delay_s=DELAY_S), sqlite_url)
    body = {"model": served.model_id, "prompt": "hello", "max_tokens": TOKENS, "n": 3}
    for overhead, total, status in _timed_post(gateway, "/v1/completions", body):
        assert status == 200
        assert 0 < overhead < total - TOKENS * DELAY_S * 1000


def test_streams_and_refusals_carry_the_header(served, sqlite_url: str) -> None:
    gateway = make_gateway(served, FixedEngine(delay_s=DELAY_S), sqlite_url)
    stream = {"model": served.model_id, "prompt": "hello", "max_tokens": TOKENS, "stream": True}
    for overhead, total, status in _timed_post(gateway, "/v1/completions", stream):
        assert status == 200 and 0 <= overhead < total
    wrong_model = {"model": "nope", "prompt": "hello", "max_tokens": TOKENS}
    for overhead, total, status in _timed_post(gateway, "/v1/completions", wrong_model):
        assert status == 404 and 0 <= overhead <= total


def test_the_clock_counts_overlapping_waits_once() -> None:
    clock = EngineClock()
    clock.enter()
    clock.enter()
    time.sleep(0.02)
    clock.leave()
    assert clock.engine_s() >= 0.02  # one still waiting: its time so far counts
    clock.leave()
    total = clock.total_s
    assert 0.02 <= total < 0.04
    time.sleep(0.01)
    assert clock.engine_s() == total  # nothing waits: the clock stands still
