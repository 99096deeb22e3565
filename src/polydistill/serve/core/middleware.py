"""The gateway's ASGI middleware: a request id on every response, the request body size
limit, request metrics, and the gateway's own time (`overhead`) on every response.

The body is read up front (at most `max_body_bytes`), so an oversized body is refused with a
413 before any route, parser or database sees it, whether or not it declares its length.
"""

import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import MutableHeaders

from polydistill.serve.core.api_errors import ApiError
from polydistill.serve.core.metrics import GatewayMetrics
from polydistill.serve.core.overhead import OVERHEAD_HEADER, overhead_ms, start_clock
from polydistill.serve.core.request_flow import new_request_id

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body exceeds {limit} bytes", code="request_too_large")


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            if not value.isdigit():
                raise ApiError(400, "invalid Content-Length header", code="invalid_request")
            if int(value) > limit:
                raise _too_large(limit)
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


FastPath = Callable[[Scope, bytes], Awaitable[ASGIApp | None]]


def gateway_middleware(
    app: ASGIApp, max_body_bytes: int, metrics: GatewayMetrics, fast_path: FastPath | None = None
) -> ASGIApp:
    """Wrap `app` with request ids, the body limit and metrics. `fast_path`, given the scope
    and the body, may answer a request itself (returning its response) instead of `app`."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["request_id"] = new_request_id()
        started = time.perf_counter()
        clock = start_clock()
        status = 500
        route_path = None

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers["x-request-id"] = state["request_id"]
                headers[OVERHEAD_HEADER] = overhead_ms(started, clock)
            await send(message)

        metrics.in_flight.inc()
        try:
            try:
                body = await _read_body(scope, receive, max_body_bytes)
            except ApiError as error:
                await error.response()(scope, receive, send_with_id)
                return
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if replayed:
                    return await receive()
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}

            response = await fast_path(scope, body) if fast_path is not None else None
            if response is not None:
                route_path = scope["path"]
                await response(scope, replay, send_with_id)
            else:
                await app(scope, replay, send_with_id)
        finally:
            metrics.in_flight.dec()
            route_path = route_path or getattr(scope.get("route"), "path", "unmatched")
            metrics.observe(route_path, status, time.perf_counter() - started)

    return middleware
