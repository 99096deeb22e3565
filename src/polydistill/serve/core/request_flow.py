"""The metered life of a generation request, shared by completions and chat.

idempotency check → admission (reserve the worst case) → generation → settle (one ledger row)
or release (nothing billed). The wire format of responses and chunks is the endpoint's
`ResponseShape`.

- Idempotency, as Stripe does it: an `Idempotency-Key` is bound to the fingerprint of the
  first request body sent with it. A retry with the same body gets the stored response (or a
  409 while the first is still running, or once a streamed one has completed); the same key
  with another body is a 422. Both are decided in the admission statement, so concurrent
  retries cannot start a second generation.
- Deadlines: every request, streamed or not, ends `request_timeout_s` after admission. A
  non-streamed one is a 504, unbilled; a stream is cut off (an error event, when the client
  still reads) and billed for what it produced.
- Clients that leave: before the first byte of the response (a non-streamed request is
  answered only at its end) the generation is cancelled and everything released; mid-stream,
  the tokens produced are billed.
- Engine failures are 5xx responses and release everything.
"""

import asyncio
import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
from anyio.to_thread import run_sync
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from polydistill.serve.core.api_errors import ApiError, unexpected_error_response
from polydistill.serve.core.wire import Usage
from polydistill.serve.engines.base import Engine, EngineError, EngineEvent, Finished, TextDelta
from polydistill.serve.engines.generation import ChoiceOutput, Job, collect, merged
from polydistill.serve.metering.accounts import KeyRecord
from polydistill.serve.metering.ledger import stored_response
from polydistill.serve.metering.meter import Meter, Ticket

REPLAY_HEADER = "idempotent-replayed"
_DEADLINE_GRACE_S = 2.0


class ResponseShape(Protocol):
    """How one endpoint writes its response and its stream chunks."""

    def response(self, outputs: list[ChoiceOutput], usage: Usage) -> BaseModel: ...

    def opening_chunks(self) -> list[dict[str, Any]]: ...

    def event_chunk(self, index: int, event: EngineEvent) -> dict[str, Any] | None: ...

    def usage_chunk(self, usage: Usage) -> dict[str, Any]: ...


@dataclass(frozen=True)
class GenerationRequest:
    """A validated request, ready to meter and run."""

    key: KeyRecord
    endpoint: str
    jobs: list[Job]
    prompt_tokens: int
    stream: bool
    include_usage: bool
    idempotency_key: str | None


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def idempotent_request_id(key_id: int, idempotency_key: str) -> str:
    """The same request id for every retry of one key's `Idempotency-Key`."""
    digest = hashlib.sha256(f"{key_id}:{idempotency_key}".encode()).hexdigest()
    return f"idem_{digest[:48]}"


def request_fingerprint(endpoint: str, body: BaseModel) -> str:
    """What an `Idempotency-Key` is bound to: the endpoint and the validated body."""
    return hashlib.sha256(f"{endpoint}\n{body.model_dump_json()}".encode()).hexdigest()


def sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


def _usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


async def _replay(meter: Meter, request_id: str, fingerprint: str | None) -> Response | None:
    stored = await run_sync(stored_response, meter.db, request_id)
    if stored.fingerprint is not None and stored.fingerprint != fingerprint:
        raise ApiError(
            422,
            "this Idempotency-Key was used with a different request body",
            code="idempotency_key_mismatch",
        )
    if stored.body is not None:
        return Response(stored.body, media_type="application/json", headers={REPLAY_HEADER: "true"})
    if stored.billed:
        raise ApiError(
            409,
            "this Idempotency-Key was used by a streamed request that has completed",
            code="idempotency_key_reused",
        )
    return None


async def run_generation(
    engine: Engine,
    meter: Meter,
    request: GenerationRequest,
    shape: ResponseShape,
    request_id: str,
    timeout_s: float,
    fingerprint: str | None = None,
) -> Response:
    """Admit `request`; return the response that runs and bills it (streamed or not)."""
    if request.idempotency_key is not None:
        replay = await _replay(meter, request_id, fingerprint)
        if replay is not None:
            return replay
    worst_completion = sum(job.params.max_tokens for job in request.jobs)
    try:
        ticket = await meter.admit(
            request.key,
            request_id,
            request.endpoint,
            request.prompt_tokens,
            worst_completion,
            request.stream,
            fingerprint,
        )
    except ApiError as error:
        if error.code != "idempotency_key_reused":
            raise
        # The first request settled between the replay check and the admission: replay it.
        return await _replay(meter, request_id, fingerprint) or error.response()
    deadline = ticket.deadline = time.monotonic() + timeout_s
    if request.stream:
        body = _stream(engine, meter, request, shape, ticket, deadline)
        return MeteredStream(body, meter, ticket, deadline)
    respond = _respond(engine, meter, request, shape, ticket, timeout_s)
    return Unstarted(respond, meter, ticket)


async def _respond(
    engine: Engine,
    meter: Meter,
    request: GenerationRequest,
    shape: ResponseShape,
    ticket: Ticket,
    timeout_s: float,
) -> Response:
    try:
        outputs = await collect(engine, request.jobs, timeout_s)
        completion_tokens = sum(output.completion_tokens for output in outputs)
        body = shape.response(outputs, _usage(request.prompt_tokens, completion_tokens))
        body_json = body.model_dump_json()
        finish = ",".join(sorted({output.finish_reason or "" for output in outputs}))
        stored = body_json if request.idempotency_key is not None else None
        await meter.settle(ticket, request.prompt_tokens, completion_tokens, finish, stored)
    except TimeoutError:
        raise ApiError(504, "generation timed out", type="server_error", code="timeout") from None
    except EngineError as error:
        raise ApiError(503, str(error), type="server_error", code="engine_error") from None
    finally:
        await meter.release(ticket)  # a no-op once settled
    return Response(body_json, media_type="application/json", headers=ticket.headers)


async def _until_disconnect(receive: Callable[[], Awaitable[dict[str, Any]]]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class Unstarted(Response):
    """A non-streamed response, generated when the server sends it: the generation runs
    while the connection is watched, and a client gone before the answer cancels it and
    releases its reservation at once (nothing billed)."""

    def __init__(self, respond: Awaitable[Response], meter: Meter, ticket: Ticket) -> None:
        super().__init__()
        self._respond = respond
        self._meter = meter
        self._ticket = ticket

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        generation = asyncio.ensure_future(self._respond)
        watcher = asyncio.ensure_future(_until_disconnect(receive))
        try:
            await asyncio.wait({generation, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not generation.done():  # the client left (or the server is stopping)
                generation.cancel()
                with anyio.CancelScope(shield=True):
                    await asyncio.wait({generation})
                    await self._meter.release(self._ticket)
        if generation.cancelled():
            return
        try:
            response = generation.result()
        except ApiError as error:
            response = error.response()
        except Exception as error:
            response = unexpected_error_response(error)
        await response(scope, receive, send)


class MeteredStream(StreamingResponse):
    """A stream that owns its ticket: whatever ends it (the end of the stream, the client
    leaving, before or after the first byte, the deadline, the server stopping), the body is
    closed, which bills what it produced, and a ticket left open is released."""

    def __init__(
        self, body: AsyncIterator[str], meter: Meter, ticket: Ticket, deadline: float
    ) -> None:
        headers = {**ticket.headers, "cache-control": "no-cache"}
        super().__init__(body, media_type="text/event-stream", headers=headers)
        self._body = body
        self._meter = meter
        self._ticket = ticket
        self._deadline = deadline

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            # The body ends itself at the deadline; this cuts a stream whose client stopped
            # reading (the body then waits on a full socket buffer).
            remaining = self._deadline + _DEADLINE_GRACE_S - time.monotonic()
            with anyio.move_on_after(max(remaining, 0)) as scope_:
                await super().__call__(scope, receive, send)
            if scope_.cancelled_caught:
                self._ticket.cut = "timeout"
        finally:
            with anyio.CancelScope(shield=True):
                await self._body.aclose()  # type: ignore[attr-defined]
                await self._meter.release(self._ticket)  # a no-op once settled


_PAST_DEADLINE = ApiError(
    504, "the stream reached its deadline", type="server_error", code="timeout"
)


def _cut_off(ticket: Ticket, deadline: float) -> ApiError | None:
    """Why a running stream must end now, if it must."""
    if time.monotonic() >= deadline:
        ticket.cut = "timeout"
        return _PAST_DEADLINE
    if ticket.lost:
        ticket.cut = "reservation_lost"
        return ApiError(
            503,
            "the request's budget reservation could not be kept",
            type="server_error",
            code="reservation_lost",
        )
    return None


async def _stream(
    engine: Engine,
    meter: Meter,
    request: GenerationRequest,
    shape: ResponseShape,
    ticket: Ticket,
    deadline: float,
) -> AsyncIterator[str]:
    produced: dict[int, int] = {}
    finishes: set[str] = set()
    try:
        for chunk in shape.opening_chunks():
            yield sse(chunk)
        async with contextlib.aclosing(merged(engine, request.jobs, deadline)) as events:
            async for index, event in events:
                if isinstance(event, TextDelta):
                    produced[index] = produced.get(index, 0) + event.tokens
                elif isinstance(event, Finished):
                    if event.reason == "cancelled":
                        raise EngineError("the engine stopped the sequence (shutting down)")
                    produced[index] = event.completion_tokens
                    finishes.add(event.reason)
                chunk = shape.event_chunk(index, event)
                if chunk is not None:
                    yield sse(chunk)
                cut = _cut_off(ticket, deadline)
                if cut is not None:
                    yield sse(cut.body())
                    break
        completion_tokens = sum(produced.values())
        if ticket.cut is None and request.include_usage:
            yield sse(shape.usage_chunk(_usage(request.prompt_tokens, completion_tokens)))
        yield sse("[DONE]")
        finish = ticket.cut or ",".join(sorted(finishes))
        await meter.settle(ticket, request.prompt_tokens, completion_tokens, finish)
    except TimeoutError:  # no event before the deadline
        ticket.cut = "timeout"
        yield sse(_PAST_DEADLINE.body())
        yield sse("[DONE]")
        await meter.settle(ticket, request.prompt_tokens, sum(produced.values()), "timeout")
    except EngineError as error:
        await meter.release(ticket)
        failure = ApiError(503, str(error), type="server_error", code="engine_error")
        yield sse(failure.body())
        yield sse("[DONE]")
    finally:
        # Reached open only when the client went away, the deadline passed while the client
        # was not reading, or the server is stopping: bill what was produced, release the rest.
        completion_tokens = sum(produced.values())
        finish = ticket.cut or "disconnected"
        if completion_tokens > 0:
            await meter.settle(ticket, request.prompt_tokens, completion_tokens, finish)
        else:
            await meter.release(ticket)
