"""A direct ASGI path for well-formed generation requests, beside the FastAPI app.

FastAPI's middleware stack, route matching and dependency solving cost more CPU per request
than everything the gateway itself does for a completion (measured in
`benchmarks/gateway.py`). A request to `/v1/completions` or `/v1/chat/completions` that has a
JSON content type, a valid bearer key, at most one acceptable `Idempotency-Key` and a body
that validates is answered here, by the same `core.generate.generation_response` the FastAPI
routes call.
Anything else goes to the FastAPI app, which answers it exactly as it always has (its
OpenAPI document, error shapes and validation stay the reference), so this path only ever
changes how fast a request is served, never what it is answered.
"""

import json
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from polydistill.serve.core.api_errors import ApiError, unexpected_error_response
from polydistill.serve.core.gateway import Gateway
from polydistill.serve.core.generate import Build, generation_response
from polydistill.serve.routes.chat.protocol import ChatCompletionRequest
from polydistill.serve.routes.chat.serving import chat_request
from polydistill.serve.routes.completions.protocol import CompletionRequest
from polydistill.serve.routes.completions.serving import completion_request

_ROUTES: dict[str, tuple[type[BaseModel], Build]] = {
    "/v1/completions": (CompletionRequest, completion_request),
    "/v1/chat/completions": (ChatCompletionRequest, chat_request),
}
_MAX_IDEMPOTENCY_KEY = 200  # as the FastAPI routes declare it


def _headers(scope: dict[str, Any]) -> dict[bytes, list[bytes]]:
    found: dict[bytes, list[bytes]] = {}
    for name, value in scope.get("headers", ()):
        if name in (b"authorization", b"content-type", b"idempotency-key"):
            found.setdefault(name, []).append(value)
    return found


def _bearer(values: list[bytes] | None) -> str | None:
    if not values:
        return None
    scheme, _, credentials = values[0].decode("latin-1").partition(" ")
    credentials = credentials.strip()
    return credentials if scheme.lower() == "bearer" and credentials else None


def _is_json(values: list[bytes] | None) -> bool:
    if not values or len(values) > 1:
        return False
    return values[0].split(b";")[0].strip().lower() == b"application/json"


def _idempotency_key(values: list[bytes] | None) -> tuple[bool, str | None]:
    """(acceptable, the key): FastAPI takes the first value and checks its length."""
    if not values:
        return True, None
    value = values[0].decode("latin-1")
    return len(value) <= _MAX_IDEMPOTENCY_KEY, value


async def try_fast_path(
    gateway: Gateway, scope: dict[str, Any], body: bytes
) -> Callable[..., Awaitable[None]] | None:
    """The response (an ASGI app) if this path takes the request, else None."""
    route = _ROUTES.get(scope["path"]) if scope["method"] == "POST" else None
    if route is None or not body:
        return None
    headers = _headers(scope)
    presented = _bearer(headers.get(b"authorization"))
    acceptable, idempotency_key = _idempotency_key(headers.get(b"idempotency-key"))
    if presented is None or not acceptable or not _is_json(headers.get(b"content-type")):
        return None
    model, build = route
    try:
        request = model.model_validate(json.loads(body))
    except (ValueError, ValidationError):  # JSON and UTF-8 errors are ValueErrors
        return None
    try:
        key = await gateway.keys.lookup(presented)
    except Exception:  # the database, most likely: the routes answer it (a 503)
        return None
    if key is None:
        return None
    try:
        return await generation_response(
            gateway, build, request, key, scope["state"], idempotency_key
        )
    except ApiError as error:
        return error.response()
    except Exception as error:  # as the FastAPI app's handler does
        return unexpected_error_response(error)
