"""The metered life of a generation request, shared by completions and chat.

idempotency check → admission (reserve the worst case) → generation → settle (one ledger row)
or release (nothing billed). Streamed requests bill the tokens produced before a client
disconnect; engine failures and timeouts are 5xx responses and release everything.
The wire format of responses and chunks is the endpoint's `ResponseShape`.
"""

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from anyio.to_thread import run_sync
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from polydistill.serve.accounts import KeyRecord
from polydistill.serve.engine import Engine, EngineError, EngineEvent, Finished, TextDelta
from polydistill.serve.errors import ApiError
from polydistill.serve.generation import ChoiceOutput, Job, collect, merged
from polydistill.serve.ledger import stored_response
from polydistill.serve.metering import Meter, Ticket
from polydistill.serve.protocol import Usage

REPLAY_HEADER = "idempotent-replayed"


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


def sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


def _usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


async def _replay(meter: Meter, request_id: str) -> Response | None:
    billed, body = await run_sync(stored_response, meter.db, request_id)
    if body is not None:
        return Response(body, media_type="application/json", headers={REPLAY_HEADER: "true"})
    if billed:
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
) -> Response:
    """Admit, run and bill `request`; return its response (streamed or not)."""
    if request.idempotency_key is not None:
        replay = await _replay(meter, request_id)
        if replay is not None:
            return replay
    worst_completion = sum(job.params.max_tokens for job in request.jobs)
    ticket = await meter.admit(
        request.key,
        request_id,
        request.endpoint,
        request.prompt_tokens,
        worst_completion,
        request.stream,
    )
    if request.stream:
        body = _stream(engine, meter, request, shape, ticket)
        headers = {**ticket.headers, "cache-control": "no-cache"}
        return StreamingResponse(body, media_type="text/event-stream", headers=headers)
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


async def _stream(
    engine: Engine, meter: Meter, request: GenerationRequest, shape: ResponseShape, ticket: Ticket
) -> AsyncIterator[str]:
    produced: dict[int, int] = {}
    finishes: set[str] = set()
    try:
        for chunk in shape.opening_chunks():
            yield sse(chunk)
        async for index, event in merged(engine, request.jobs):
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
        completion_tokens = sum(produced.values())
        if request.include_usage:
            yield sse(shape.usage_chunk(_usage(request.prompt_tokens, completion_tokens)))
        yield sse("[DONE]")
        await meter.settle(
            ticket, request.prompt_tokens, completion_tokens, ",".join(sorted(finishes))
        )
    except EngineError as error:
        await meter.release(ticket)
        failure = ApiError(503, str(error), type="server_error", code="engine_error")
        yield sse(failure.body())
        yield sse("[DONE]")
    finally:
        # Reached open only when the client went away (or the server is stopping) mid-stream:
        # bill what was produced for it, release the rest.
        completion_tokens = sum(produced.values())
        if completion_tokens > 0:
            await meter.settle(ticket, request.prompt_tokens, completion_tokens, "disconnected")
        else:
            await meter.release(ticket)
