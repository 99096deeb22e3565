"""The gateway's app factory: the routers, the lifespan (engine, stale sweeps), `/health`.

`create_app(gateway)` returns the ASGI app of the API port. Each route lives in its folder
under `routes/` (`router.py`: the FastAPI router; `protocol.py`: its schemas; `serving.py`:
what it does); what they share is in `core/`. Every route but `/health` needs
`Authorization: Bearer <key>`; nothing serves weights, configuration or files, and `/metrics`
lives on the separate admin app (`core.metrics.admin_app`).
"""

import asyncio
import contextlib
import functools
import gc
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request

from polydistill.serve.core.api_errors import install_error_handlers
from polydistill.serve.core.gateway import Gateway, gateway_of
from polydistill.serve.core.middleware import ASGIApp, gateway_middleware
from polydistill.serve.core.overhead import TimedEngine
from polydistill.serve.fast_path import try_fast_path
from polydistill.serve.metering.storage import is_unavailable
from polydistill.serve.routes.chat.router import router as chat_router
from polydistill.serve.routes.completions.router import router as completions_router
from polydistill.serve.routes.models.router import router as models_router
from polydistill.serve.routes.tokenizer.router import router as tokenizer_router

log = logging.getLogger("polydistill.serve")
ROUTERS = (models_router, tokenizer_router, completions_router, chat_router)


async def health(request: Request) -> dict[str, str]:
    return {"status": "ok" if gateway_of(request).ready else "starting"}


async def _maintain_forever(gateway: Gateway) -> None:
    """Every `sweep_interval_s`: retried writes, the heartbeat, the sweep (`Meter.maintain`)."""
    settings = gateway.settings
    while True:
        await asyncio.sleep(settings.sweep_interval_s)
        try:
            for deployment in gateway.models.values():
                await deployment.meter.maintain(settings.reservation_ttl_s)
        except Exception as error:  # try again at the next interval
            if not is_unavailable(error):
                log.exception("metering maintenance failed")


def create_app(gateway: Gateway) -> ASGIApp:
    """The API app for `gateway`, wrapped in request-id, body-limit and metrics middleware
    and the direct path for well-formed generation requests."""
    deployments = list(gateway.models.values())
    for deployment in deployments:
        if not isinstance(deployment.engine, TimedEngine):  # engine time, for the overhead header
            deployment.engine = TimedEngine(deployment.engine)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        for deployment in deployments:
            await deployment.engine.start()
        await gateway.default.meter.sweep(gateway.settings.reservation_ttl_s)  # every model's
        sweeper = asyncio.create_task(_maintain_forever(gateway))
        # torch, transformers and the model are about 250,000 objects; a full collection walks
        # them all (240 ms measured) while every request in flight waits. Frozen after
        # start-up, they are left out of collections, which then see only newer objects.
        gc.collect()
        gc.freeze()
        gateway.ready = True
        try:
            yield
        finally:
            gc.unfreeze()
            gateway.ready = False
            sweeper.cancel()
            for deployment in deployments:
                await deployment.engine.close()
                await deployment.meter.release_all()

    app = FastAPI(
        title="polydistill gateway",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.gateway = gateway
    install_error_handlers(app)
    app.add_api_route("/health", health, methods=["GET"])
    for router in ROUTERS:
        app.include_router(router)
    fast = functools.partial(try_fast_path, gateway)
    return gateway_middleware(app, gateway.settings.max_body_bytes, gateway.metrics, fast)
