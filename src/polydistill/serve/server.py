"""Runs the API app and the admin (metrics) app under uvicorn in one process and event loop,
or in several worker processes that share the API port (`run_workers`).

The API server owns the signal handlers; when it stops (Ctrl-C, SIGTERM), its lifespan
releases this gateway's reservations, and the admin server is stopped after it.

With N workers the parent binds the API socket once and forks N processes, each of which
builds its own gateway (engine, database connections, meter) and accepts connections from the
shared socket; the kernel hands each connection to one of them. They share nothing in memory:
budgets, rate windows and the ledger live in the database, whose single-statement admission
keeps several processes from passing a limit together (as it does for replicas). Each worker
serves its own metrics, worker k on the admin port + k. The parent forwards SIGTERM and
SIGINT to the workers, and stops them all when one of them exits.
"""

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
from collections.abc import Callable, Coroutine
from types import FrameType
from typing import Any

import uvicorn

from polydistill.serve.core.middleware import ASGIApp


async def serve_both(
    api: ASGIApp,
    admin: ASGIApp,
    host: str,
    port: int,
    admin_host: str,
    admin_port: int,
    log_level: str = "info",
    sockets: list[socket.socket] | None = None,
) -> None:
    """Serve `api` on host:port (or on `sockets`, bound already) and `admin` on
    admin_host:admin_port until interrupted."""
    # No access log: a line per request costs CPU on the hot path, and every request is
    # counted in the metrics (and billed ones in the usage ledger) already.
    api_config = uvicorn.Config(
        api,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=30,
    )
    api_server = uvicorn.Server(api_config)
    admin_server = uvicorn.Server(
        uvicorn.Config(admin, host=admin_host, port=admin_port, log_level="warning", lifespan="off")
    )
    # Only the API server may own the process's signal handlers.
    admin_server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    admin_task = asyncio.create_task(admin_server.serve())
    try:
        await api_server.serve(sockets=sockets)
    finally:
        admin_server.should_exit = True
        await admin_task


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on uvloop where it is installed (as `uvicorn.run` would), else on asyncio's
    own loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def run_servers(
    api: ASGIApp, admin: ASGIApp, host: str, port: int, admin_host: str, admin_port: int
) -> None:
    run_loop(serve_both(api, admin, host, port, admin_host, admin_port))


Worker = Callable[[int, socket.socket], None]
"""Runs worker `index` on the shared API socket until it is told to stop."""


def _run_worker(worker: Worker, index: int, listener: socket.socket) -> None:
    # The parent's handlers were inherited with the fork; uvicorn installs its own.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    worker(index, listener)


def bind_listener(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket on host:port, inheritable by forked workers. Its protocol is
    IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on connections accepted from such a
    socket, and without it a response's head and body, written apart, wait for the client's
    delayed ACK (40 ms a request, measured)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )[0]
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(address)
    listener.listen(backlog)
    listener.set_inheritable(True)
    return listener


def run_workers(worker: Worker, host: str, port: int, workers: int) -> int:
    """Bind host:port, fork `workers` processes running `worker` on it, and wait for them;
    the exit code is the first non-zero one of a worker, else 0."""
    listener = bind_listener(host, port)
    context = multiprocessing.get_context("fork")
    processes = [
        context.Process(target=_run_worker, args=(worker, index, listener), daemon=False)
        for index in range(workers)
    ]
    for process in processes:
        process.start()
    listener.close()

    def stop(signum: int, _frame: FrameType | None = None) -> None:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        multiprocessing.connection.wait([p.sentinel for p in processes])
        stop(signal.SIGTERM)  # one stopped: stop the others
        for process in processes:
            process.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return next((p.exitcode for p in processes if p.exitcode), 0)
