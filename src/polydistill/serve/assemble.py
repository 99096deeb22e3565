"""Builds a `Gateway` from what `polydistill serve` is given: a model directory, a database,
settings, and optionally an upstream server instead of the in-process engine.
"""

import logging
import os
from pathlib import Path

from polydistill.serve.core.gateway import Gateway
from polydistill.serve.core.metrics import GatewayMetrics
from polydistill.serve.core.served_lineage import lineage_summary, load_lineage
from polydistill.serve.core.served_model import load_causal_lm, load_served_model
from polydistill.serve.engines.base import Engine
from polydistill.serve.engines.local import LocalEngine
from polydistill.serve.engines.upstream import UpstreamEngine
from polydistill.serve.metering.keys import load_server_secret
from polydistill.serve.metering.meter import Meter
from polydistill.serve.metering.money import Price
from polydistill.serve.metering.storage import database_url, open_database
from polydistill.serve.settings import GatewaySettings, price_of

log = logging.getLogger("polydistill.serve")
UPSTREAM_KEY_ENV = "POLYDISTILL_UPSTREAM_API_KEY"


def default_database(model_dir: Path) -> str:
    """The SQLite file beside the model: `<model dir>.gateway.db`."""
    resolved = model_dir.resolve()
    return f"sqlite:///{resolved.parent / (resolved.name + '.gateway.db')}"


def open_gateway(
    model_dir: Path,
    settings: GatewaySettings,
    db: str | None = None,
    model_name: str | None = None,
    upstream: str | None = None,
    upstream_model: str | None = None,
    secret_file: Path | None = None,
    price: Price | None = None,
    engine: Engine | None = None,
) -> Gateway:
    """Everything `create_app` needs. `price` overrides the settings' price of the model;
    `engine` overrides the choice between local and upstream (benchmarks use it)."""
    served = load_served_model(model_dir, model_name)
    lineage = load_lineage(model_dir)
    url = database_url(db) if db else default_database(model_dir)
    server_secret = load_server_secret(url, secret_file)
    database = open_database(url)
    price = price or price_of(settings, served.model_id)
    if price == Price():
        log.warning(
            "no price configured for %s: requests are metered at no charge", served.model_id
        )
    if engine is None and upstream:
        api_key = os.environ.get(UPSTREAM_KEY_ENV)
        engine = UpstreamEngine(
            upstream, upstream_model or served.model_id, api_key, settings.request_timeout_s
        )
    elif engine is None:
        if settings.torch_threads is not None:
            import torch

            torch.set_num_threads(settings.torch_threads)
        engine = LocalEngine(load_causal_lm(model_dir), served, settings.max_batch_size)
    metrics = GatewayMetrics()
    meter = Meter(
        database, served.model_id, price, settings.rate_window_s, on_settle=metrics.record_usage
    )
    return Gateway(
        served=served,
        engine=engine,
        db=database,
        meter=meter,
        settings=settings,
        server_secret=server_secret,
        metrics=metrics,
        lineage=lineage_summary(lineage) if lineage else None,
    )
