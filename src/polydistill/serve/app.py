"""The gateway's app factory: routes, authentication, lifespan (engine, stale sweeps).

`create_app(gateway)` returns the ASGI app of the API port. Every route but `/health` needs
`Authorization: Bearer <key>`; nothing serves weights, configuration or files, and `/metrics`
lives on the separate admin app (`metrics.admin_app`).
"""

import asyncio
import contextlib
import functools
import gc
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from polydistill.serve.accounts import KeyRecord
from polydistill.serve.auth import KeyCache
from polydistill.serve.chat import chat_prompt_ids, chat_request
from polydistill.serve.checkpoint import ServedModel
from polydistill.serve.completions import completion_request
from polydistill.serve.engine import Engine
from polydistill.serve.errors import ApiError, ErrorResponseDoc, install_error_handlers
from polydistill.serve.fast_path import generation_response, try_fast_path
from polydistill.serve.limits import check_token_ids
from polydistill.serve.metering import Meter
from polydistill.serve.metrics import GatewayMetrics
from polydistill.serve.middleware import ASGIApp, gateway_middleware
from polydistill.serve.overhead import TimedEngine
from polydistill.serve.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
)
from polydistill.serve.settings import GatewaySettings
from polydistill.serve.storage import is_unavailable

log = logging.getLogger("polydistill.serve")


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


_bearer = HTTPBearer(auto_error=False)
_missing_key = ApiError(
    401, "missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key"
)


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


async def require_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> KeyRecord:
    """The key behind the request's bearer token, or a 401."""
    if credentials is None:
        raise _missing_key
    key = await _gateway(request).keys.lookup(credentials.credentials)
    if key is None:
        raise ApiError(401, "invalid, expired or revoked API key", code="invalid_api_key")
    return key


Key = Annotated[KeyRecord, Depends(require_key)]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)]
_errors: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponseDoc} for code in (400, 401, 403, 404, 409, 413, 422, 429, 503, 504)
}


def _model_card(gateway: Gateway) -> ModelCard:
    served = gateway.served
    return ModelCard(
        id=served.model_id,
        created=served.created,
        context_length=served.context_length,
        lineage=gateway.lineage,
    )


def _register_model_routes(app: FastAPI) -> None:
    @app.get("/health")
    async def health(request: Request) -> dict[str, str]:
        return {"status": "ok" if _gateway(request).ready else "starting"}

    @app.get("/v1/models", responses=_errors)
    async def list_models(request: Request, _: Key) -> ModelList:
        return ModelList(data=[_model_card(_gateway(request))])

    @app.get("/v1/models/{model_id}", responses=_errors)
    async def get_model(request: Request, model_id: str, _: Key) -> ModelCard:
        card = _model_card(_gateway(request))
        if model_id != card.id:
            raise ApiError(404, f"the model {model_id!r} does not exist", code="model_not_found")
        return card


def _register_tokenizer_routes(app: FastAPI) -> None:
    @app.post("/tokenize", responses=_errors)
    async def tokenize(request: Request, body: TokenizeRequest, _: Key) -> TokenizeResponse:
        served = _gateway(request).served
        if body.messages is not None:
            ids = chat_prompt_ids(served, body.messages)
        else:
            encoded = served.tokenizer(body.prompt, add_special_tokens=body.add_special_tokens)
            ids = list(encoded["input_ids"])
        return TokenizeResponse(count=len(ids), max_model_len=served.context_length, tokens=ids)

    @app.post("/detokenize", responses=_errors)
    async def detokenize(request: Request, body: DetokenizeRequest, _: Key) -> DetokenizeResponse:
        served = _gateway(request).served
        if body.tokens:
            check_token_ids(body.tokens, served.vocab_size, "tokens")
        return DetokenizeResponse(prompt=served.decode(body.tokens))

    @app.get("/tokenizer_info", responses=_errors)
    async def tokenizer_info(request: Request, _: Key) -> dict[str, Any]:
        return _gateway(request).served.tokenizer_info()


def _register_generation_routes(app: FastAPI) -> None:
    # Well-formed requests to these routes are usually answered by `fast_path`, which calls
    # the same `generation_response`; these routes answer the rest and document the API.
    @app.post("/v1/completions", response_model=CompletionResponse, responses=_errors)
    async def completions(
        request: Request, body: CompletionRequest, key: Key, idempotency_key: IdempotencyKey = None
    ) -> Response:
        gateway = _gateway(request)
        state = request.scope["state"]
        return await generation_response(
            gateway, completion_request, body, key, state, idempotency_key
        )

    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses=_errors)
    async def chat_completions(
        request: Request,
        body: ChatCompletionRequest,
        key: Key,
        idempotency_key: IdempotencyKey = None,
    ) -> Response:
        gateway = _gateway(request)
        state = request.scope["state"]
        return await generation_response(gateway, chat_request, body, key, state, idempotency_key)


async def _maintain_forever(gateway: Gateway) -> None:
    """Every `sweep_interval_s`: retried writes, the heartbeat, the sweep (`Meter.maintain`)."""
    settings = gateway.settings
    while True:
        await asyncio.sleep(settings.sweep_interval_s)
        try:
            await gateway.meter.maintain(settings.reservation_ttl_s)
        except Exception as error:  # try again at the next interval
            if not is_unavailable(error):
                log.exception("metering maintenance failed")


def create_app(gateway: Gateway) -> ASGIApp:
    """The API app for `gateway`, wrapped in request-id, body-limit and metrics middleware
    and the direct path for well-formed generation requests."""
    if not isinstance(gateway.engine, TimedEngine):  # engine time, for the overhead header
        gateway.engine = TimedEngine(gateway.engine)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gateway.engine.start()
        await gateway.meter.sweep(gateway.settings.reservation_ttl_s)
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
            await gateway.engine.close()
            await gateway.meter.release_all()

    app = FastAPI(
        title="polydistill gateway",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.gateway = gateway
    install_error_handlers(app)
    _register_model_routes(app)
    _register_tokenizer_routes(app)
    _register_generation_routes(app)
    fast = functools.partial(try_fast_path, gateway)
    return gateway_middleware(app, gateway.settings.max_body_bytes, gateway.metrics, fast)
