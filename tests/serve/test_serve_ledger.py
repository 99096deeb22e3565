"""Metering on SQLite and PostgreSQL alike: reservations, settlement, idempotency, rate
windows, stale sweeps, key lifecycle, and the budget race through two gateway replicas."""

import asyncio
import json

import pytest
import sqlalchemy as sa
from serve_harness import SERVER_SECRET, TEST_PRICE, client_for, make_gateway

from polydistill.errors import UserError
from polydistill.serve.engines.fixed import FixedEngine
from polydistill.serve.metering import ledger
from polydistill.serve.metering.accounts import (
    audit_entries,
    authenticate,
    create_key,
    list_keys,
    revoke_key,
    rotate_key,
)
from polydistill.serve.metering.money import request_cost
from polydistill.serve.metering.storage import (
    api_keys,
    open_database,
    raw_write_transaction,
    reservations,
)

NOW = 1_800_000_000_000


def _key_row(db: sa.Engine, name: str):
    with db.connect() as conn:
        return conn.execute(sa.select(api_keys).where(api_keys.c.name == name)).one()


def _key_id(db: sa.Engine, name: str) -> int:
    return _key_row(db, name).id


def test_reserve_settle_release_move_money_exactly(db_url: str) -> None:
    db = open_database(db_url)
    create_key(db, SERVER_SECRET, "acme", NOW, budget_micros=1000)
    key_id = _key_id(db, "acme")
    admitted = ledger.reserve(db, key_id, "r1", 600, 50, NOW, 60, "gw")
    assert admitted.refusal is None
    assert ledger.reserve(db, key_id, "r2", 500, 50, NOW, 60, "gw").refusal == "budget"
    assert ledger.settle(
        db, "r1", key_id, "acme", "m", "completions", 10, 5, 250, False, "stop", NOW
    )
    row = _key_row(db, "acme")
    assert (row.spent_micros, row.reserved_micros) == (250, 0)
    assert ledger.reserve(db, key_id, "r2", 500, 50, NOW, 60, "gw").refusal is None
    assert ledger.release(db, "r2")
    assert not ledger.release(db, "r2")
    row = _key_row(db, "acme")
    assert (row.spent_micros, row.reserved_micros) == (250, 0)
    assert [r["request_id"] for r in ledger.usage_rows(db)] == ["r1"]


def test_a_request_id_is_billed_once(db_url: str) -> None:
    db = open_database(db_url)
    create_key(db, SERVER_SECRET, "acme", NOW, budget_micros=10_000)
    key_id = _key_id(db, "acme")
    assert ledger.reserve(db, key_id, "dup", 100, 10, NOW, 60, "gw").refusal is None
    assert ledger.reserve(db, key_id, "dup", 100, 10, NOW, 60, "gw").refusal == "duplicate"
    args = (key_id, "acme", "m", "completions", 3, 2, 40, False, "stop", NOW)
    assert ledger.settle(db, "dup", *args)
    assert not ledger.settle(db, "dup", *args)
    assert len(ledger.usage_rows(db)) == 1
    row = _key_row(db, "acme")
    assert (row.spent_micros, row.reserved_micros) == (40, 0)


def test_rate_windows_count_requests_and_tokens(db_url: str) -> None:
    db = open_database(db_url)
    create_key(db, SERVER_SECRET, "acme", NOW, rpm=2, tpm=100)
    key_id = _key_id(db, "acme")
    first = ledger.reserve(db, key_id, "a", 0, 60, NOW, 60, "gw")
    assert first.refusal is None and (first.window_requests, first.window_tokens) == (1, 60)
    assert ledger.reserve(db, key_id, "b", 0, 60, NOW, 60, "gw").refusal == "tokens"
    assert ledger.reserve(db, key_id, "c", 0, 101, NOW, 60, "gw").refusal == "too_large"
    # Settling below the reservation gives the unused tokens back to the window.
    ledger.settle(db, "a", key_id, "acme", "m", "completions", 10, 10, 0, False, "stop", NOW)
    assert ledger.reserve(db, key_id, "b", 0, 60, NOW, 60, "gw").refusal is None
    refused = ledger.reserve(db, key_id, "d", 0, 1, NOW, 60, "gw")
    assert refused.refusal == "requests" and 0 < refused.reset_ms <= 60_000
    assert ledger.reserve(db, key_id, "d", 0, 1, NOW + 60_000, 60, "gw").refusal is None


def test_stale_and_owned_reservations_are_released(db_url: str) -> None:
    db = open_database(db_url)
    create_key(db, SERVER_SECRET, "acme", NOW, budget_micros=1000)
    key_id = _key_id(db, "acme")
    ledger.reserve(db, key_id, "old", 300, 1, NOW - 10_000, 60, "dead-gateway")
    ledger.reserve(db, key_id, "new", 300, 1, NOW, 60, "this-gateway")
    assert ledger.sweep_stale(db, NOW - 5_000) == 1
    assert _key_row(db, "acme").reserved_micros == 300
    assert ledger.release_owned(db, "this-gateway") == 1
    assert _key_row(db, "acme").reserved_micros == 0
    # A request whose reservation was swept is still billed once when it settles.
    assert ledger.settle(db, "old", key_id, "acme", "m", "completions", 1, 1, 7, False, "stop", NOW)
    assert _key_row(db, "acme").spent_micros == 7


def test_key_lifecycle_rotation_revocation_and_audit(db_url: str) -> None:
    db = open_database(db_url)
    first = create_key(db, SERVER_SECRET, "acme", NOW, budget_micros=5, models=["m"])
    assert first.startswith("pd_") and len(first) > 50
    assert authenticate(db, SERVER_SECRET, first, NOW).models == ("m",)
    assert authenticate(db, SERVER_SECRET, first[:-1] + "x", NOW) is None
    assert authenticate(db, b"another-secret-another-secret-xx", first, NOW) is None
    with pytest.raises(UserError, match="already exists"):
        create_key(db, SERVER_SECRET, "acme", NOW)
    second = rotate_key(db, SERVER_SECRET, "acme", 3600, NOW)
    assert authenticate(db, SERVER_SECRET, first, NOW + 3_599_000) is not None
    assert authenticate(db, SERVER_SECRET, first, NOW + 3_600_000) is None
    assert authenticate(db, SERVER_SECRET, second, NOW + 3_600_000).name == "acme"
    [summary] = list_keys(db, NOW + 3_600_000)
    assert summary.status == "active" and len(summary.key_prefixes) == 1
    revoke_key(db, "acme", NOW + 1)
    assert authenticate(db, SERVER_SECRET, second, NOW + 2) is None
    assert [e["action"] for e in audit_entries(db)] == ["create", "rotate", "revoke"]
    with db.connect() as conn:
        stored = " ".join(
            str(v) for row in conn.execute(sa.text("SELECT * FROM key_secrets")) for v in row
        )
    assert first not in stored and second not in stored


def test_expired_keys_do_not_authenticate(db_url: str) -> None:
    db = open_database(db_url)
    key = create_key(db, SERVER_SECRET, "temp", NOW, expires_ms=NOW + 1000)
    assert authenticate(db, SERVER_SECRET, key, NOW + 999) is not None
    assert authenticate(db, SERVER_SECRET, key, NOW + 1000) is None
    assert list_keys(db, NOW + 1000)[0].status == "expired"


async def _race(gateways, keys: list[str], requests: int) -> list:
    async with client_for(gateways[0]) as first, client_for(gateways[1]) as second:
        clients = [first, second]

        async def one(i: int):
            body = {"model": gateways[0].served.model_id, "prompt": [1, 2, 3, 4], "max_tokens": 6}
            headers = {"Authorization": f"Bearer {keys[i % 2]}"}
            return await clients[i % 2].post("/v1/completions", json=body, headers=headers)

        return await asyncio.gather(*(one(i) for i in range(requests)))


def test_budget_race_never_overspends(db_url: str, served) -> None:
    """200 concurrent requests through two replicas sharing the database, with a budget
    for exactly 20: 20 are served, the rest refused, and spend equals the ledger."""
    gateways = [make_gateway(served, FixedEngine(), db_url) for _ in range(2)]
    db = gateways[0].db
    per_request = request_cost(TEST_PRICE, 4, 6)
    key = create_key(db, SERVER_SECRET, "racer", NOW, budget_micros=20 * per_request)
    # Rotation gives the same account a second credential: one per replica.
    other = rotate_key(db, SERVER_SECRET, "racer", 3600, NOW)
    responses = asyncio.run(_race(gateways, [key, other], 200))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 20 and statuses.count(429) == 180
    refusal = next(r for r in responses if r.status_code == 429)
    assert refusal.json()["error"]["code"] == "insufficient_quota"
    assert refusal.headers["x-should-retry"] == "false"
    rows = ledger.usage_rows(db)
    assert len(rows) == 20
    assert {r["request_id"] for r in rows} == {
        r.headers["x-request-id"] for r in responses if r.status_code == 200
    }
    row = _key_row(db, "racer")
    assert row.spent_micros == sum(r["cost_micros"] for r in rows) == 20 * per_request
    assert row.spent_micros <= row.budget_micros and row.reserved_micros == 0
    with db.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(reservations)).scalar() == 0


def test_idempotency_key_replays_without_billing_twice(db_url: str, served) -> None:
    gateway = make_gateway(served, FixedEngine(), db_url)
    key = create_key(gateway.db, SERVER_SECRET, "acme", NOW)
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "order-42"}
    body = {"model": served.model_id, "prompt": "hello", "max_tokens": 3}

    async def go():
        async with client_for(gateway) as client:
            first = await client.post("/v1/completions", json=body, headers=headers)
            again = await client.post("/v1/completions", json=body, headers=headers)
            streamed_headers = {**headers, "Idempotency-Key": "stream-1"}
            stream_body = {**body, "stream": True}
            streamed = await client.post(
                "/v1/completions", json=stream_body, headers=streamed_headers
            )
            retried = await client.post(
                "/v1/completions", json=stream_body, headers=streamed_headers
            )
            return first, again, streamed, retried

    first, again, streamed, retried = asyncio.run(go())
    assert first.status_code == again.status_code == streamed.status_code == 200
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert first.headers["x-request-id"] == again.headers["x-request-id"]
    assert (
        retried.status_code == 409 and retried.json()["error"]["code"] == "idempotency_key_reused"
    )
    rows = ledger.usage_rows(gateway.db)
    assert len(rows) == 2 and json.loads(first.text)["usage"]["completion_tokens"] == 3


def test_the_heartbeat_keeps_a_reservation_from_the_sweep(db_url: str) -> None:
    db = open_database(db_url)
    create_key(db, SERVER_SECRET, "acme", NOW, budget_micros=1000)
    key_id = _key_id(db, "acme")
    for request_id in ("alive", "dead"):
        ledger.reserve(db, key_id, request_id, 300, 1, NOW, 60, "gw")
    with raw_write_transaction(db) as run:
        lost = ledger.refresh_in(run, ["alive", "gone"], NOW + 20_000)
    assert lost == {"gone"}
    assert ledger.sweep_stale(db, NOW + 10_000) == 1  # "dead" was not refreshed
    assert _key_row(db, "acme").reserved_micros == 300
    assert ledger.settle(db, "alive", key_id, "acme", "m", "completions", 1, 1, 200, True,
                         "stop", NOW)  # fmt: skip
    row = _key_row(db, "acme")
    assert (row.spent_micros, row.reserved_micros) == (200, 0)


def test_settling_a_swept_request_never_passes_the_budget(db_url: str) -> None:
    db = open_database(db_url)
    create_key(db, SERVER_SECRET, "acme", NOW, budget_micros=1000)
    key_id = _key_id(db, "acme")
    ledger.reserve(db, key_id, "swept", 900, 1, NOW, 60, "gw")
    assert ledger.sweep_stale(db, NOW + 1) == 1
    ledger.reserve(db, key_id, "other", 600, 1, NOW, 60, "gw")  # takes the freed budget
    args = ("acme", "m", "completions", 1, 1, 800, True, "stop", NOW)
    assert ledger.settle(db, "swept", key_id, *args)
    row = _key_row(db, "acme")
    # 400 of headroom was left beside the live reservation of 600: billed 400, not 800.
    assert (row.spent_micros, row.reserved_micros) == (400, 600)
    assert [r["cost_micros"] for r in ledger.usage_rows(db)] == [400]
    assert row.spent_micros + row.reserved_micros <= row.budget_micros


def test_an_idempotency_key_is_bound_to_its_body(db_url: str) -> None:
    db = open_database(db_url)
    create_key(db, SERVER_SECRET, "acme", NOW, budget_micros=10_000)
    key_id = _key_id(db, "acme")

    def reserve(fingerprint: str) -> str | None:
        return ledger.reserve(db, key_id, "idem", 100, 1, NOW, 60, "gw", fingerprint).refusal

    assert reserve("a" * 64) is None
    assert reserve("b" * 64) == "mismatch"
    assert reserve("a" * 64) == "duplicate"  # in flight
    ledger.settle(db, "idem", key_id, "acme", "m", "completions", 1, 1, 50, False, "stop", NOW)
    assert reserve("a" * 64) == "settled"  # billed: no second generation
    assert reserve("b" * 64) == "mismatch"
    stored = ledger.stored_response(db, "idem")
    assert stored.billed and stored.fingerprint == "a" * 64
    row = _key_row(db, "acme")
    assert (row.spent_micros, row.reserved_micros) == (50, 0)
    # A request released unbilled (it failed) may be retried with its own body.
    assert ledger.reserve(db, key_id, "idem2", 100, 1, NOW, 60, "gw", "c" * 64).refusal is None
    ledger.release(db, "idem2")
    assert ledger.reserve(db, key_id, "idem2", 100, 1, NOW, 60, "gw", "c" * 64).refusal is None
