"""The life of a metered request on SQLite and PostgreSQL: Idempotency-Key retries under
concurrency (409 while in flight, 422 with another body, one generation and one ledger row),
the deadline of streams and of non-streamed requests, and clients that leave before the
first byte."""

import asyncio
import contextlib
import json
import time

import httpx
import sqlalchemy as sa
from serve_harness import SERVER_SECRET, TEST_PRICE, client_for, make_gateway

from polydistill.serve.engines.fixed import FixedEngine
from polydistill.serve.fast_path import try_fast_path
from polydistill.serve.metering import ledger
from polydistill.serve.metering.accounts import create_key, list_keys
from polydistill.serve.metering.money import request_cost
from polydistill.serve.metering.storage import reservations
from polydistill.serve.settings import GatewaySettings

NOW = 1_800_000_000_000


def _held(db: sa.Engine) -> int:
    with db.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(reservations)).scalar()


def _balanced(gateway) -> list[dict]:  # type: ignore[no-untyped-def]
    """The ledger rows, after checking that spend equals them and nothing is held."""
    rows = ledger.usage_rows(gateway.db)
    [summary] = list_keys(gateway.db, NOW)
    assert summary.spent_micros == sum(r["cost_micros"] for r in rows)
    assert summary.reserved_micros == 0 and _held(gateway.db) == 0
    return rows


async def _concurrently(gateway, requests: list[tuple[dict, dict]]) -> list[httpx.Response]:  # type: ignore[no-untyped-def]
    async with client_for(gateway) as client:
        return await asyncio.gather(
            *(client.post("/v1/completions", json=body, headers=h) for body, h in requests)
        )


def test_concurrent_retries_run_one_generation(served, db_url: str) -> None:
    """Twelve copies of one request with one Idempotency-Key, sent at once, while the first
    is still generating: one generation, one ledger row; the others are 409s in OpenAI's
    shape or replays of the same answer."""
    gateway = make_gateway(served, FixedEngine(delay_s=0.01), db_url)
    key = create_key(gateway.db, SERVER_SECRET, "acme", NOW, budget_micros=10**9)
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "order-7"}
    body = {"model": served.model_id, "prompt": "hello", "max_tokens": 30}
    responses = asyncio.run(_concurrently(gateway, [(body, headers)] * 12))
    fresh = [
        r for r in responses if r.status_code == 200 and "idempotent-replayed" not in r.headers
    ]
    assert len(fresh) == 1
    for response in responses:
        if response.status_code == 409:
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert error["code"] == "idempotency_key_in_use"
        else:
            assert response.status_code == 200 and response.json() == fresh[0].json()
    assert any(r.status_code == 409 for r in responses)  # some arrived during the generation
    [row] = _balanced(gateway)
    assert row["completion_tokens"] == 30 and row["request_id"].startswith("idem_")


def test_a_key_reused_with_another_body_is_a_422(served, db_url: str) -> None:
    """Concurrent requests with one Idempotency-Key and two bodies: whichever body claims the
    key first is generated once; every request with the other body gets a 422, before or
    after that generation ends, and nothing is billed for them."""
    gateway = make_gateway(served, FixedEngine(delay_s=0.01), db_url)
    key = create_key(gateway.db, SERVER_SECRET, "acme", NOW, budget_micros=10**9)
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "order-8"}
    bodies = [
        {"model": served.model_id, "prompt": prompt, "max_tokens": 20} for prompt in ("a", "b")
    ]
    requests = [(bodies[i % 2], headers) for i in range(12)]
    responses = asyncio.run(_concurrently(gateway, requests))
    fresh = [
        i for i, r in enumerate(responses) if r.status_code == 200
        and "idempotent-replayed" not in r.headers
    ]  # fmt: skip
    assert len(fresh) == 1
    winner = requests[fresh[0]][0]
    for (sent, _), response in zip(requests, responses, strict=True):
        if sent != winner:
            assert response.status_code == 422, response.text
            assert response.json()["error"]["code"] == "idempotency_key_mismatch"
        else:
            assert response.status_code in (200, 409)
    # After the fact too: the other body is still refused, the same body replayed.
    later = asyncio.run(_concurrently(gateway, [(b, headers) for b in bodies]))
    assert sorted(r.status_code for r in later) == [200, 422]
    [row] = _balanced(gateway)
    assert row["prompt_tokens"] == len(served.encode(winner["prompt"]))


def test_concurrent_streamed_retries_stream_once(served, db_url: str) -> None:
    gateway = make_gateway(served, FixedEngine(delay_s=0.01), db_url)
    key = create_key(gateway.db, SERVER_SECRET, "acme", NOW, budget_micros=10**9)
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "stream-9"}
    body = {"model": served.model_id, "prompt": "hello", "max_tokens": 20, "stream": True}
    responses = asyncio.run(_concurrently(gateway, [(body, headers)] * 6))
    assert [r.status_code for r in responses].count(200) == 1
    codes = {r.json()["error"]["code"] for r in responses if r.status_code != 200}
    assert codes <= {"idempotency_key_in_use", "idempotency_key_reused"} and codes
    [row] = _balanced(gateway)
    assert row["streamed"] and row["completion_tokens"] == 20


def _events(response: httpx.Response) -> list:
    lines = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    return [line if line == "[DONE]" else json.loads(line) for line in lines]


def test_streams_and_requests_end_at_their_deadline(served, db_url: str) -> None:
    """request_timeout_s of 1 s against 10 s of generation: the stream is cut off with an
    error event and billed for what it produced; the non-streamed request is a 504, unbilled."""
    settings = GatewaySettings(request_timeout_s=1)
    engine = FixedEngine(delay_s=0.02)
    gateway = make_gateway(served, engine, db_url, settings)
    key = create_key(gateway.db, SERVER_SECRET, "acme", NOW, budget_micros=10**9)
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": served.model_id, "prompt": "hello", "max_tokens": 240}

    async def calls():  # type: ignore[no-untyped-def]
        async with client_for(gateway) as client:
            started = time.monotonic()
            streamed = await client.post(
                "/v1/completions", json={**body, "stream": True}, headers=headers
            )
            took = time.monotonic() - started
            plain = await client.post("/v1/completions", json=body, headers=headers)
            return streamed, took, plain

    streamed, took, plain = asyncio.run(calls())
    assert 1.0 <= took < 8.0  # generous: the cores are shared
    events = _events(streamed)
    assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "timeout"
    sent = sum(len(e["choices"][0]["text"]) // len(engine.token) for e in events[:-2])
    assert plain.status_code == 504 and plain.json()["error"]["code"] == "timeout"
    [row] = _balanced(gateway)
    assert row["finish"] == "timeout" and 0 < row["completion_tokens"] == sent < 240
    prompt_tokens = len(served.encode("hello"))
    assert row["cost_micros"] == request_cost(TEST_PRICE, prompt_tokens, sent)


async def _disconnected(gateway, body: dict, headers: dict, send_fails: bool) -> None:  # type: ignore[no-untyped-def]
    """Send `body` through the direct path to a client already gone: its receive says
    http.disconnect at once (and, with `send_fails`, the first send raises, as a socket
    closed before the response would)."""
    raw = [(n.lower().encode(), v.encode()) for n, v in headers.items()]
    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": raw,
             "state": {"request_id": "req_gone"}, "asgi": {"spec_version": "2.3"}}  # fmt: skip
    response = await try_fast_path(gateway, scope, json.dumps(body).encode())
    assert response is not None and _held(gateway.db) == 1  # admitted, reserved

    async def receive() -> dict:
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if send_fails:
            raise OSError("the client closed the connection")

    with contextlib.suppress(OSError):
        await response(scope, receive, send)


def test_a_client_gone_before_the_first_byte_releases_at_once(served, db_url: str) -> None:
    engine = FixedEngine(delay_s=0.05)
    gateway = make_gateway(served, engine, db_url)
    key = create_key(gateway.db, SERVER_SECRET, "acme", NOW, budget_micros=10**9)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    body = {"model": served.model_id, "prompt": "hello", "max_tokens": 200}

    async def go() -> None:
        for streamed, send_fails in ((False, False), (True, False), (True, True)):
            started = time.monotonic()
            await _disconnected(gateway, {**body, "stream": streamed}, headers, send_fails)
            # Released now, not after the 10 s the generation would take (or a sweep).
            assert time.monotonic() - started < 5.0
            assert _held(gateway.db) == 0, (streamed, send_fails)

    asyncio.run(go())
    assert _balanced(gateway) == []
    assert engine.cancelled >= 2  # the generations that had started were stopped


def test_a_stream_whose_reservation_was_swept_is_cut_off_within_budget(served, db_url: str) -> None:
    """The sweep frees a running stream's reservation (as another replica would after the
    gateway lost the database for longer than the TTL) and another request takes most of
    the freed budget: the next heartbeat flags the stream, which is cut off, and billed at
    most what the budget still allows."""
    gateway = make_gateway(served, FixedEngine(delay_s=0.02), db_url)
    prompt_tokens = len(served.encode("hello"))
    worst = request_cost(TEST_PRICE, prompt_tokens, 150)
    key = create_key(gateway.db, SERVER_SECRET, "acme", NOW, budget_micros=worst)
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": served.model_id, "prompt": "hello", "max_tokens": 150, "stream": True}

    async def scenario() -> httpx.Response:
        async with client_for(gateway) as client:
            stream = asyncio.create_task(client.post("/v1/completions", json=body, headers=headers))
            await asyncio.sleep(0.5)
            assert await asyncio.to_thread(ledger.sweep_stale, gateway.db, 2 * NOW) == 1
            taken = await asyncio.to_thread(
                ledger.reserve, gateway.db, 1, "other", worst - 10, 1, NOW, 60, "replica"
            )
            assert taken.refusal is None
            await gateway.meter.heartbeat()
            return await stream

    events = _events(asyncio.run(scenario()))
    assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "reservation_lost"
    [row] = ledger.usage_rows(gateway.db)
    assert row["finish"] == "reservation_lost" and row["completion_tokens"] < 150
    assert row["cost_micros"] <= 10  # the headroom beside the other reservation
    [summary] = list_keys(gateway.db, NOW)
    assert summary.spent_micros == row["cost_micros"]
    assert summary.spent_micros + summary.reserved_micros <= worst
