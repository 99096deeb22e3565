"""A client that disconnects mid-stream, against a real uvicorn server on loopback: the
tokens produced are billed once, the rest of the reservation is released, generation stops."""

import socket
import threading
import time

import httpx
import pytest
import uvicorn
from serve_harness import SERVER_SECRET, make_gateway

from polydistill.serve import ledger
from polydistill.serve.accounts import create_key, list_keys
from polydistill.serve.app import create_app
from polydistill.serve.fixed_engine import FixedEngine

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


def test_disconnect_mid_stream_bills_what_was_produced(served, db_url: str) -> None:
    engine = FixedEngine(delay_s=0.02)
    gateway = make_gateway(served, engine, db_url)
    key = create_key(gateway.db, SERVER_SECRET, "acme", 0, budget_micros=10**9)
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(gateway), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    _wait_for(lambda: server.started)
    try:
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
    finally:
        server.should_exit = True
        thread.join(timeout=30)
