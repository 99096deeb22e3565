"""Clients that misbehave mid-stream, against a real uvicorn server on loopback: one that
disconnects (the tokens produced are billed once, the rest of the reservation is released,
generation stops) and one that stops reading (cut off at the deadline, billed for what it
was sent)."""

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from serve_harness import SERVER_SECRET, make_gateway

from polydistill.serve.app import create_app
from polydistill.serve.engines.fixed import FixedEngine
from polydistill.serve.metering import ledger
from polydistill.serve.metering.accounts import create_key, list_keys
from polydistill.serve.settings import Caps, GatewaySettings

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


@contextlib.contextmanager
def _serving(gateway) -> Iterator[int]:  # type: ignore[no-untyped-def]
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(gateway), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    _wait_for(lambda: server.started)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_disconnect_mid_stream_bills_what_was_produced(served, db_url: str) -> None:
    engine = FixedEngine(delay_s=0.02)
    gateway = make_gateway(served, engine, db_url)
    key = create_key(gateway.db, SERVER_SECRET, "acme", 0, budget_micros=10**9)
    with _serving(gateway) as port:
        body = {"model": served.model_id, "prompt": "hello", "max_tokens": 200, "stream": True}
        headers = {"Authorization": f"Bearer {key}"}
        with (
            httpx.Client(base_url=f"http://127.0.0.1:{port}") as client,
            client.stream("POST", "/v1/completions", json=body, headers=headers) as response,
        ):
            assert response.status_code == 200
            received = 0
            for line in response.iter_lines():
                received += line.startswith("data: ")
                if received == 5:
                    break
        # The client is gone (its connections closed) after five chunks.
        _wait_for(lambda: len(ledger.usage_rows(gateway.db)) == 1)
        [row] = ledger.usage_rows(gateway.db)
        assert row["finish"] == "disconnected" and row["streamed"]
        assert 5 <= row["completion_tokens"] < 200
        _wait_for(lambda: engine.cancelled == 1)
        [summary] = list_keys(gateway.db, 0)
        assert summary.reserved_micros == 0 and summary.spent_micros == row["cost_micros"]


def test_a_client_that_stops_reading_is_cut_off_at_the_deadline(served, db_url: str) -> None:
    """Four choices of 240 tokens of 32 kB each (30 MB, more than the socket buffers hold)
    to a client that never reads: the stream blocks, and is cut at the deadline (1 s, plus
    the grace) instead of holding its reservation for as long as the client stays."""
    engine = FixedEngine(token="x" * 32_000)
    settings = GatewaySettings(request_timeout_s=1, caps=Caps(max_n=4))
    gateway = make_gateway(served, engine, db_url, settings)
    key = create_key(gateway.db, SERVER_SECRET, "acme", 0, budget_micros=10**9)
    body = json.dumps(
        {"model": served.model_id, "prompt": "hello", "max_tokens": 240, "n": 4, "stream": True}
    ).encode()
    request = (
        b"POST /v1/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    with _serving(gateway) as port, socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(request)  # and never read
        started = time.monotonic()
        _wait_for(lambda: len(ledger.usage_rows(gateway.db)) == 1, timeout_s=30)
        assert time.monotonic() - started < 15
        [row] = ledger.usage_rows(gateway.db)
        assert row["finish"] == "timeout" and 0 < row["completion_tokens"] < 4 * 240
        [summary] = list_keys(gateway.db, 0)
        assert summary.reserved_micros == 0 and summary.spent_micros == row["cost_micros"]
