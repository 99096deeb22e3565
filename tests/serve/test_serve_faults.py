"""Faults on SQLite and PostgreSQL alike: the database unreachable in the middle of requests
(503s in OpenAI's shape, nothing billed twice, recovery when it returns), and a real
`polydistill serve` killed with SIGKILL mid-stream and restarted (the ledger balances and no
reservation outlives the restart's sweep). Neither the database password nor an API key
appears in any body, log or stream."""

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from serve_harness import SERVER_SECRET, client_for, make_gateway
from serve_outage import TEST_PASSWORD, outage

from polydistill.serve.engines.fixed import FixedEngine
from polydistill.serve.metering import ledger
from polydistill.serve.metering.accounts import create_key, list_keys
from polydistill.serve.metering.keys import SECRET_ENV
from polydistill.serve.metering.storage import open_database, reservations
from polydistill.serve.settings import GatewaySettings

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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_gateway(model_dir: Path, url: str, work: Path) -> tuple[subprocess.Popen, str]:
    """`polydistill serve` as a subprocess on free loopback ports, once it answers /health."""
    port = _free_port()
    command = [sys.executable, "-m", "polydistill.serve", "serve", str(model_dir),
               "--port", str(port), "--admin-port", str(_free_port()), "--db", url,
               "--config", str(work / "gateway.yaml")]  # fmt: skip
    env = {**os.environ, SECRET_ENV: SERVER_SECRET.decode()}
    with (work / "server.log").open("a") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while True:
        assert server.poll() is None, (work / "server.log").read_text()
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/health").json()["status"] == "ok":
                return server, f"http://127.0.0.1:{port}"
        assert time.monotonic() < deadline, "the gateway did not start"
        time.sleep(0.2)


def _wait_until(condition, timeout_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.2)


@pytest.mark.slow
def test_a_gateway_killed_mid_stream_leaves_a_balanced_ledger(
    tiny_model_dir: Path, db_url: str, tmp_path: Path
) -> None:
    """SIGKILL while a stream is running, then a restart on the same database: the ledger
    holds exactly the requests that were answered, the dead stream's reservation is swept
    by the restarted gateway, spend equals the ledger; no log line holds the database
    password or the API key."""
    url = sa.engine.make_url(db_url)
    if url.get_backend_name() == "postgresql":
        url = url.set(password=TEST_PASSWORD)  # trusted on loopback, but in every URL
    url_text = url.render_as_string(hide_password=False)
    db = open_database(url_text)
    key = create_key(db, SERVER_SECRET, "acme", NOW, budget_micros=10**9)
    (tmp_path / "gateway.yaml").write_text(
        f"prices:\n  {tiny_model_dir.name}: {{input: '0.50', output: '1.50'}}\n"
        "sweep_interval_s: 1\nreservation_ttl_s: 10\ntorch_threads: 1\n"
    )
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": tiny_model_dir.name, "prompt": "The quick brown", "max_tokens": 4}
    server, api = _start_gateway(tiny_model_dir, url_text, tmp_path)
    answered = []
    try:
        plain = httpx.post(f"{api}/v1/completions", json=body, headers=headers, timeout=60)
        assert plain.status_code == 200, plain.text
        answered.append(plain.headers["x-request-id"])
        streamed = httpx.post(
            f"{api}/v1/completions", json={**body, "stream": True}, headers=headers, timeout=60
        )
        assert streamed.status_code == 200 and streamed.text.endswith("[DONE]\n\n")
        answered.append(streamed.headers["x-request-id"])
        # Four choices of 200 tokens: still running after three events.
        long = {**body, "max_tokens": 200, "n": 4, "stream": True}
        with httpx.stream(
            "POST", f"{api}/v1/completions", json=long, headers=headers, timeout=60
        ) as response:
            events = (line for line in response.iter_lines() if line.startswith("data: "))
            for _ in range(3):
                next(events)
            server.send_signal(signal.SIGKILL)
            assert server.wait(timeout=30) == -signal.SIGKILL
            with contextlib.suppress(httpx.HTTPError):
                assert "[DONE]" not in "".join(events)
        assert _held(db) == 1  # the dead stream's reservation outlived its gateway

        server, api = _start_gateway(tiny_model_dir, url_text, tmp_path)
        _wait_until(lambda: _held(db) == 0)  # swept once 10 s without a heartbeat pass
        again = httpx.post(f"{api}/v1/completions", json=body, headers=headers, timeout=60)
        assert again.status_code == 200
        answered.append(again.headers["x-request-id"])
        refused = httpx.post(f"{api}/v1/completions", json=body, headers={"Authorization": "x"})
        assert refused.status_code == 401 and key not in refused.text
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    rows = ledger.usage_rows(db)
    assert [r["request_id"] for r in rows] == answered
    [summary] = list_keys(db, NOW)
    assert summary.spent_micros == sum(r["cost_micros"] for r in rows)
    assert summary.reserved_micros == 0 and _held(db) == 0
    log = (tmp_path / "server.log").read_text()
    assert "serving" in log and TEST_PASSWORD not in log and key not in log
    db.dispose()
