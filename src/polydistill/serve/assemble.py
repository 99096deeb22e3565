"""Builds a `Gateway` from what `polydistill serve` is given: one or more model directories
(each served under its id), a database, settings, and optionally an upstream server instead
of the in-process engine (one model then).

    gateway = open_gateway([("student", Path("run/student")),
                            ("student-no-qwen", Path("run-no-qwen/student"))], settings)

Every model's lineage is verified before anything is loaded: one whose weights are not the
ones its signed lineage names, or whose record was changed, stops the gateway (`UserError`).
"""

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from polydistill.errors import UserError
from polydistill.serve.core.gateway import Deployment, Gateway
from polydistill.serve.core.metrics import GatewayMetrics
from polydistill.serve.core.served_lineage import ServedLineage, load_served_lineage
from polydistill.serve.core.served_model import ServedModel, load_causal_lm, load_served_model
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
ModelSource = tuple[str | None, Path]
"""A model to serve: its id (None: the one `served_model.load_served_model` reads) and its
directory."""


def default_database(model_dir: Path) -> str:
    """The SQLite file beside the model: `<model dir>.gateway.db`."""
    resolved = model_dir.resolve()
    return f"sqlite:///{resolved.parent / (resolved.name + '.gateway.db')}"


def model_sources(
    models: Path | Sequence[ModelSource], model_name: str | None
) -> list[ModelSource]:
    """`models` as (id, directory) pairs; `model_name` names a single model."""
    sources = [(None, models)] if isinstance(models, Path) else list(models)
    if model_name is None:
        return sources
    if len(sources) != 1 or sources[0][0] not in (None, model_name):
        raise UserError("--model-name names one model given as DIR; give several as NAME=DIR")
    return [(model_name, sources[0][1])]


def verified_models(
    sources: Sequence[ModelSource],
) -> list[tuple[ServedModel, Path, ServedLineage | None]]:
    """Each model's tokenizer and limits and its verified lineage, before any weights load;
    two models under one id are refused."""
    loaded = []
    for name, model_dir in sources:
        served = load_served_model(model_dir, name)
        if any(other.model_id == served.model_id for other, _, _ in loaded):
            raise UserError(f"two models are served as {served.model_id!r}; name them NAME=DIR")
        loaded.append((served, model_dir, load_served_lineage(model_dir)))
    return loaded


def _engine(
    served: ServedModel,
    model_dir: Path,
    settings: GatewaySettings,
    upstream: str | None,
    upstream_model: str | None,
) -> Engine:
    if upstream:
        api_key = os.environ.get(UPSTREAM_KEY_ENV)
        return UpstreamEngine(
            upstream, upstream_model or served.model_id, api_key, settings.request_timeout_s
        )
    return LocalEngine(load_causal_lm(model_dir), served, settings.max_batch_size)


def open_gateway(
    models: Path | Sequence[ModelSource],
    settings: GatewaySettings,
    db: str | None = None,
    model_name: str | None = None,
    upstream: str | None = None,
    upstream_model: str | None = None,
    secret_file: Path | None = None,
    price: Price | None = None,
    engine: Engine | None = None,
) -> Gateway:
    """Everything `create_app` needs. `price` overrides the settings' price of every model;
    `engine` overrides the choice between local and upstream (benchmarks use it); both, like
    `upstream`, apply to a single model."""
    sources = model_sources(models, model_name)
    if (upstream or engine is not None) and len(sources) != 1:
        raise UserError("--upstream fronts one model; serve several models in-process")
    loaded = verified_models(sources)
    url = database_url(db) if db else default_database(sources[0][1])
    server_secret = load_server_secret(url, secret_file)
    database = open_database(url)
    if engine is None and not upstream and settings.torch_threads is not None:
        import torch

        torch.set_num_threads(settings.torch_threads)
    metrics = GatewayMetrics()
    deployments = {}
    for served, model_dir, lineage in loaded:
        model_price = price or price_of(settings, served.model_id)
        if model_price == Price():
            log.warning(
                "no price configured for %s: requests are metered at no charge", served.model_id
            )
        meter = Meter(
            database, served.model_id, model_price, settings.rate_window_s,
            on_settle=metrics.record_usage, notices=lineage.notice_ids if lineage else (),
        )  # fmt: skip
        chosen = engine or _engine(served, model_dir, settings, upstream, upstream_model)
        deployments[served.model_id] = Deployment(served, chosen, meter, lineage)
    return Gateway(deployments, database, settings, server_secret, metrics)
