"""The gateway's hot path against its references: group-committed metering writes against
one transaction per operation (on SQLite and PostgreSQL), the direct ASGI path against the
FastAPI routes, and the Rust tokenizer against transformers' own call."""

import asyncio
import functools
import json
import sqlite3
import threading

import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from serve_harness import SERVER_SECRET, TEST_PRICE, client_for, make_gateway

from polydistill.serve.engines.fixed import FixedEngine
from polydistill.serve.fast_path import try_fast_path
from polydistill.serve.metering import ledger
from polydistill.serve.metering.accounts import create_key
from polydistill.serve.metering.money import request_cost
from polydistill.serve.metering.storage import api_keys, open_database, reservations
from polydistill.serve.metering.write_batching import WriteBatcher

NOW = 1_800_000_000_000


def _reserve(request_id: str, key_id: int, cost: int) -> functools.partial:
    return functools.partial(
        ledger.reserve_in, key_id=key_id, request_id=request_id, cost_micros=cost, tokens=1,
        now_ms=NOW, window_s=60, owner="gw",
    )  # fmt: skip


def _failing(run) -> None:  # type: ignore[no-untyped-def]
    raise RuntimeError("this operation fails")


def _account(db: sa.Engine, key_id: int):  # type: ignore[no-untyped-def]
    with db.connect() as conn:
        row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).one()
        held = conn.execute(sa.select(sa.func.count()).select_from(reservations)).scalar()
    return row, held


def test_batched_reservations_match_one_transaction_each(db_url: str) -> None:
    """30 concurrent reservations against a budget for 10, plus a failing operation in the
    same batch: the same admissions as sequential transactions, and the failure stays alone."""
    db = open_database(db_url)
    create_key(db, SERVER_SECRET, "acme", NOW, budget_micros=100)
    with db.connect() as conn:
        key_id = conn.execute(sa.select(api_keys.c.id)).scalar()
    batcher = WriteBatcher(db)

    async def race():  # type: ignore[no-untyped-def]
        futures = [batcher.submit(_reserve(f"r{i}", key_id, 10), key_id) for i in range(30)]
        futures.insert(7, batcher.submit(_failing, key_id))
        return await asyncio.gather(*futures, return_exceptions=True)

    outcomes = asyncio.run(race())
    batcher.close()
    failure = outcomes.pop(7)
    assert isinstance(failure, RuntimeError)
    admitted = [o for o in outcomes if o.refusal is None]
    assert len(admitted) == 10 and {o.refusal for o in outcomes} == {None, "budget"}
    row, held = _account(db, key_id)
    assert row.reserved_micros == 100 and held == 10
    db.dispose()


def test_a_locked_sqlite_file_does_not_block_the_event_loop(sqlite_url: str) -> None:
    """While another connection holds the write lock, the loop keeps running; the batch
    waits on the thread and completes once the lock is released. The thread waits up to 10
    minutes for the lock (not the default minute): on a starved machine the loop's 20 ticks once
    took longer than the default, and the thread gave up before the lock was released."""
    db = open_database(f"{sqlite_url}?timeout=600")
    create_key(db, SERVER_SECRET, "acme", NOW, budget_micros=100)
    other = sqlite3.connect(
        sqlite_url.removeprefix("sqlite:///"), isolation_level=None, check_same_thread=False
    )
    other.execute("BEGIN IMMEDIATE")
    batcher = WriteBatcher(db)
    released = threading.Event()

    async def go():  # type: ignore[no-untyped-def]
        pending = batcher.submit(_reserve("r1", 1, 10), 1)
        ticks = 0
        while ticks < 20:  # the loop runs while the file is locked
            await asyncio.sleep(0.005)
            ticks += 1
        assert not pending.done()
        threading.Thread(target=lambda: (other.execute("COMMIT"), released.set())).start()
        return await pending

    admission = asyncio.run(go())
    batcher.close()
    assert released.is_set() and admission.refusal is None
    assert _account(db, 1)[0].reserved_micros == 10
    other.close()
    db.dispose()


def test_a_cancelled_admission_gives_its_reservation_back(sqlite_url: str, served) -> None:
    gateway = make_gateway(served, FixedEngine(), sqlite_url)
    plaintext = create_key(gateway.db, SERVER_SECRET, "acme", NOW, budget_micros=1000)

    async def go() -> None:
        record = await gateway.keys.lookup(plaintext)
        admit = asyncio.create_task(gateway.meter.admit(record, "r1", "completions", 4, 6, False))
        await asyncio.sleep(0)  # submitted, not yet flushed
        admit.cancel()
        for _ in range(5):
            await asyncio.sleep(0)
        gateway.meter.writer.close()

    asyncio.run(go())
    row, held = _account(gateway.db, 1)
    assert row.window_requests == 1  # it was admitted...
    assert held == 0 and row.reserved_micros == 0  # ...and given back


def _scope(path: str, headers: dict[str, str]) -> dict:
    raw = [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    return {"type": "http", "method": "POST", "path": path, "headers": raw, "state": {}}


async def _answer(response, scope: dict) -> tuple[int, bytes]:  # type: ignore[no-untyped-def]
    """Send `response` (an ASGI app) to a client that stays connected: (status, body)."""
    sent: list[dict] = []

    async def receive() -> dict:
        await asyncio.Event().wait()  # never disconnects
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    await response(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_the_direct_path_takes_only_well_formed_requests(sqlite_url: str, served) -> None:
    """It answers what the FastAPI routes would answer with a 200, the same way, and leaves
    every request that might be refused to them."""
    gateway = make_gateway(served, FixedEngine(), sqlite_url)
    key = create_key(gateway.db, SERVER_SECRET, "acme", NOW)
    good = {"model": served.model_id, "prompt": "hello", "max_tokens": 3}
    json_headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    refused = [
        ({**json_headers, "Authorization": "Bearer pd_000000000000_" + "x" * 43}, good),
        ({**json_headers, "Authorization": f"Basic {key}"}, good),
        ({**json_headers, "Content-Type": "text/plain"}, good),
        ({**json_headers, "Idempotency-Key": "k" * 201}, good),
        (json_headers, {**good, "max_tokens": -1}),
        (json_headers, {**good, "n": "two"}),
    ]

    async def go():  # type: ignore[no-untyped-def]
        for headers, body in refused:
            scope = _scope("/v1/completions", headers)
            assert await try_fast_path(gateway, scope, json.dumps(body).encode()) is None
        scope = _scope("/v1/completions", json_headers)
        assert await try_fast_path(gateway, scope, b"{not json") is None
        scope = _scope("/v1/completions", json_headers)
        scope["state"]["request_id"] = "req_direct"
        direct = await try_fast_path(gateway, scope, json.dumps(good).encode())
        assert direct is not None
        direct = await _answer(direct, scope)
        # Through FastAPI: a JSON subtype the direct path leaves alone.
        async with client_for(gateway) as client:
            headers = {**json_headers, "Content-Type": "application/merge-patch+json"}
            routed = await client.post("/v1/completions", content=json.dumps(good), headers=headers)
        return direct, routed

    direct, routed = asyncio.run(go())
    assert direct[0] == routed.status_code == 200
    ours, theirs = json.loads(direct[1]), routed.json()
    for reply in (ours, theirs):
        reply.pop("id"), reply.pop("created")
    assert ours == theirs
    rows = ledger.usage_rows(gateway.db)
    assert sorted(r["request_id"] for r in rows) == sorted(
        ["req_direct", routed.headers["x-request-id"]]
    )
    assert {r["cost_micros"] for r in rows} == {
        request_cost(TEST_PRICE, rows[0]["prompt_tokens"], 3)
    }


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=60))
def test_encode_matches_the_tokenizers_own_call(served, text: str) -> None:
    expected = list(served.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert served.encode(text) == expected
