"""Helpers of the gateway's tests: a gateway around any engine, its ASGI lifespan, and an
HTTP client for it."""

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx

from polydistill.serve.app import create_app
from polydistill.serve.core.gateway import Deployment, Gateway
from polydistill.serve.core.metrics import GatewayMetrics
from polydistill.serve.core.served_lineage import ServedLineage
from polydistill.serve.core.served_model import ServedModel
from polydistill.serve.engines.base import Engine
from polydistill.serve.metering.meter import Meter
from polydistill.serve.metering.money import Price
from polydistill.serve.metering.storage import open_database
from polydistill.serve.settings import GatewaySettings

SERVER_SECRET = b"test-server-secret-0123456789abcdef"
TEST_PRICE = Price(1_000_000, 2_000_000)  # $1 per million prompt tokens, $2 per million output


def make_gateway(
    served: ServedModel,
    engine: Engine,
    db_url: str,
    settings: GatewaySettings | None = None,
    price: Price = TEST_PRICE,
    lineage: dict | None = None,
) -> Gateway:
    """A gateway of one model as `open_gateway` builds it, with a known secret and price;
    `lineage` is what `/v1/models` shows of it."""
    settings = settings or GatewaySettings()
    database = open_database(db_url)
    metrics = GatewayMetrics()
    meter = Meter(database, served.model_id, price, settings.rate_window_s, metrics.record_usage)
    shown = ServedLineage(lineage) if lineage is not None else None
    models = {served.model_id: Deployment(served, engine, meter, shown)}
    return Gateway(models, database, settings, SERVER_SECRET, metrics)


@contextlib.asynccontextmanager
async def lifespan(app) -> AsyncIterator[None]:  # type: ignore[no-untyped-def]
    """Run an ASGI app's lifespan startup and shutdown around the block."""
    inbox: asyncio.Queue = asyncio.Queue()
    outbox: asyncio.Queue = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.create_task(app(scope, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    started = await outbox.get()
    assert started["type"] == "lifespan.startup.complete", started
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        stopped = await outbox.get()
        assert stopped["type"] == "lifespan.shutdown.complete", stopped
        await task


@contextlib.asynccontextmanager
async def client_for(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the gateway's app in process, lifespan included."""
    app = create_app(gateway)
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client
