"""`Gateway`: what every route shares (the model, its engine, the meter, the settings), and
the dependencies that hand it and the caller's key to a route.

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
from polydistill.serve.core.served_model import ServedModel
from polydistill.serve.engines.base import Engine
from polydistill.serve.metering.accounts import KeyRecord
from polydistill.serve.metering.auth import KeyCache
from polydistill.serve.metering.meter import Meter
from polydistill.serve.settings import GatewaySettings


@dataclass
class Gateway:
    """Everything the routes share: the model, its engine, the meter and the settings."""

    served: ServedModel
    engine: Engine
    db: sa.Engine
    meter: Meter
    settings: GatewaySettings
    server_secret: bytes
    metrics: GatewayMetrics
    lineage: dict[str, Any] | None = None
    ready: bool = False
    keys: KeyCache = field(init=False)

    def __post_init__(self) -> None:
        self.keys = KeyCache(self.db, self.server_secret, self.settings.auth_cache_s)


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
