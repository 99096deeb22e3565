"""Runs the API app and the admin (metrics) app under uvicorn in one process and event loop.

The API server owns the signal handlers; when it stops (Ctrl-C, SIGTERM), its lifespan
releases this gateway's reservations, and the admin server is stopped after it.
"""

import asyncio
import contextlib

import uvicorn

from polydistill.serve.middleware import ASGIApp


async def serve_both(
    api: ASGIApp,
    admin: ASGIApp,
    host: str,
    port: int,
    admin_host: str,
    admin_port: int,
    log_level: str = "info",
) -> None:
    """Serve `api` on host:port and `admin` on admin_host:admin_port until interrupted."""
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
        await api_server.serve()
    finally:
        admin_server.should_exit = True
        await admin_task


def run_servers(
    api: ASGIApp, admin: ASGIApp, host: str, port: int, admin_host: str, admin_port: int
) -> None:
    asyncio.run(serve_both(api, admin, host, port, admin_host, admin_port))
