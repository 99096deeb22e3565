"""`Gateway`: what every route shares (the served models, each with its engine, meter and
lineage; the database, the settings), and the dependencies that hand it and the caller's key
to a route. Which model a key may use is `core.access`.

    @router.get("/v1/models", responses=ERROR_RESPONSES)
    async def list_models(request: Request, key: Key) -> ModelList:
        gateway = gateway_of(request)
"""

from dataclasses import dataclass, field
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from polydistill.serve.core.api_errors import ApiError, ErrorResponseDoc
from polydistill.serve.core.metrics import GatewayMetrics
from polydistill.serve.core.served_lineage import ServedLineage
from polydistill.serve.core.served_model import ServedModel
from polydistill.serve.engines.base import Engine
from polydistill.serve.metering.accounts import KeyRecord
from polydistill.serve.metering.auth import KeyCache
from polydistill.serve.metering.meter import Meter
from polydistill.serve.settings import GatewaySettings


@dataclass
class Deployment:
    """One served model: its tokenizer and limits, its engine, its meter (price, usage rows)
    and its verified lineage."""

    served: ServedModel
    engine: Engine
    meter: Meter
    lineage: ServedLineage | None = None


@dataclass
class Gateway:
    """Everything the routes share: the served models by id (the first is the default of the
    routes whose `model` is optional), the database and the settings."""

    models: dict[str, Deployment]
    db: sa.Engine
    settings: GatewaySettings
    server_secret: bytes
    metrics: GatewayMetrics
    ready: bool = False
    keys: KeyCache = field(init=False)

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("a gateway serves at least one model")
        self.keys = KeyCache(self.db, self.server_secret, self.settings.auth_cache_s)

    @property
    def default(self) -> Deployment:
        return next(iter(self.models.values()))

    # A gateway of one model (tests, benchmarks) reads it as it always did.
    @property
    def served(self) -> ServedModel:
        return self.default.served

    @property
    def engine(self) -> Engine:
        return self.default.engine

    @property
    def meter(self) -> Meter:
        return self.default.meter


def gateway_of(request: Request) -> Gateway:
    return request.app.state.gateway


_bearer = HTTPBearer(auto_error=False)
_missing_key = ApiError(
    401, "missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key"
)


async def require_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> KeyRecord:
    """The key behind the request's bearer token, or a 401."""
    if credentials is None:
        raise _missing_key
    key = await gateway_of(request).keys.lookup(credentials.credentials)
    if key is None:
        raise ApiError(401, "invalid, expired or revoked API key", code="invalid_api_key")
    return key


Key = Annotated[KeyRecord, Depends(require_key)]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)]
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponseDoc} for code in (400, 401, 403, 404, 409, 413, 422, 429, 503, 504)
}
