"""Several worker processes on one port (`polydistill serve --workers N`): every worker
answers, and together they never pass a key's budget."""

import asyncio
import contextlib
import multiprocessing
import os
import re
import signal
import socket
import time
from collections.abc import Iterator

import httpx
import sqlalchemy as sa
from serve_harness import SERVER_SECRET, TEST_PRICE, make_gateway

from polydistill.serve.app import create_app
from polydistill.serve.core.metrics import admin_app
from polydistill.serve.core.served_model import ServedModel
from polydistill.serve.engines.fixed import FixedEngine
from polydistill.serve.metering.accounts import create_key
from polydistill.serve.metering.ledger import usage_rows
from polydistill.serve.metering.money import request_cost
from polydistill.serve.metering.storage import api_keys, open_database
from polydistill.serve.server import bind_listener, run_workers, serve_both

NOW = 1_800_000_000_000
WORKERS = 2
REQUESTS = 120
AFFORDABLE = 12
MAX_TOKENS = 3


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def _workers(served: ServedModel, db_url: str, port: int, admin_port: int) -> Iterator[None]:
    def worker(index: int, listener: socket.socket) -> None:
        # A short delay per token keeps a worker busy, so that the other accepts too.
        gateway = make_gateway(served, FixedEngine(delay_s=0.002), db_url)
        admin = admin_app(gateway.metrics, lambda: gateway.ready)
        serving = serve_both(
            create_app(gateway), admin, "127.0.0.1", port, "127.0.0.1", admin_port + index,
            log_level="warning", sockets=[listener],
        )  # fmt: skip
        asyncio.run(serving)

    context = multiprocessing.get_context("fork")
    parent = context.Process(target=run_workers, args=(worker, "127.0.0.1", port, WORKERS))
    parent.start()
    try:
        _wait_ready([admin_port + index for index in range(WORKERS)])
        yield
    finally:
        os.kill(parent.pid, signal.SIGTERM)
        parent.join(timeout=60)
        assert parent.exitcode == 0


def _wait_ready(admin_ports: list[int]) -> None:
    deadline = time.monotonic() + 60
    for admin_port in admin_ports:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{admin_port}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.1)


async def _race(port: int, key: str, body: dict) -> list[int]:
    limits = httpx.Limits(max_connections=REQUESTS)
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        headers = {"Authorization": f"Bearer {key}"}
        responses = await asyncio.gather(
            *(client.post("/v1/completions", json=body, headers=headers) for _ in range(REQUESTS))
        )
    return [response.status_code for response in responses]


def _answered(admin_port: int) -> int:
    text = httpx.get(f"http://127.0.0.1:{admin_port}/metrics").text
    found = re.findall(
        r'polydistill_requests_total\{route="/v1/completions",status="\d+"\} (\S+)', text
    )
    return int(sum(float(count) for count in found))


def test_two_workers_answer_and_never_overspend(served: ServedModel, db_url: str) -> None:
    db = open_database(db_url)
    prompt_tokens = len(served.encode("hello"))
    per_request = request_cost(TEST_PRICE, prompt_tokens, MAX_TOKENS)
    key = create_key(db, SERVER_SECRET, "acme", NOW, budget_micros=AFFORDABLE * per_request)
    port, admin_port = _free_port(), _free_port()
    body = {"model": served.model_id, "prompt": "hello", "max_tokens": MAX_TOKENS}
    with _workers(served, db_url, port, admin_port):
        statuses = asyncio.run(_race(port, key, body))
        answered = [_answered(admin_port + index) for index in range(WORKERS)]
    assert sorted(set(statuses)) == [200, 429]
    assert statuses.count(200) == AFFORDABLE
    assert sum(answered) == REQUESTS and min(answered) > 0, answered
    rows = usage_rows(db)
    with db.connect() as conn:
        account = conn.execute(sa.select(api_keys)).one()
    db.dispose()
    assert len(rows) == AFFORDABLE
    assert account.spent_micros == sum(r["cost_micros"] for r in rows) == AFFORDABLE * per_request
    assert account.reserved_micros == 0


def test_connections_on_the_shared_socket_do_not_wait_for_delayed_acks() -> None:
    """asyncio sets TCP_NODELAY on connections accepted from the workers' socket."""
    listener = bind_listener("127.0.0.1", _free_port())
    seen: list[int] = []

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    async def go() -> None:
        server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
        _, writer = await asyncio.open_connection(*listener.getsockname())
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        writer.close()
        server.close()

    asyncio.run(go())
    assert seen and seen[0] != 0
