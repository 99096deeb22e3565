"""Admission and billing around each generation request: reserve, then settle or release.

`Meter.admit` reserves the request's worst case (all prompt tokens plus every choice's
`max_tokens`) or raises the OpenAI-shaped refusal; exactly one of `settle` (tokens were
produced: one ledger row) and `release` (nothing billed: errors, 5xx, refusals after
admission) must follow, which `Ticket.closed` enforces. Both run shielded from cancellation,
so a client that disconnects mid-stream still gets its produced tokens billed and the rest of
its reservation freed.

The three hot writes go through a `WriteBatcher` (group commit; see `batching`). The ledger
is exact in this sense: a request that produced tokens has its one ledger row committed
before its response ends (a non-streamed response is sent only after it; a stream writes
`[DONE]`, then commits, then closes), and the budget check and the reservation are one
statement in the database, never a copy in memory. "Committed" is as durable as the database
makes it: on SQLite (WAL, synchronous=NORMAL) it survives a crash of the gateway but the last
commits may be lost to a power failure; PostgreSQL follows its `synchronous_commit`.

The database may be unreachable for a while. An admission that cannot be written is a 503; a
settlement or release that cannot be written is kept and retried by `maintain` (every
`sweep_interval_s`) until the database answers. Retrying is safe: a request id is billed at
most once. A stream's settlement is retried (its client has the tokens); a non-streamed
response whose settlement fails is not sent (503) and its reservation is released instead.
If a settlement's commit was lost in flight (PostgreSQL) and its retry is a release, the row
it wrote stands: billed once, and not answered.

`maintain` also sends the heartbeat: the reservations of the requests this gateway is still
running are marked alive, so that only those of dead gateways are swept.
"""

import asyncio
import contextlib
import functools
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import sqlalchemy as sa
from anyio.to_thread import run_sync

from polydistill.serve.core.api_errors import ApiError, database_unavailable
from polydistill.serve.metering import ledger
from polydistill.serve.metering.accounts import KeyRecord
from polydistill.serve.metering.ledger import Admission, Usage
from polydistill.serve.metering.money import Price, request_cost
from polydistill.serve.metering.storage import Run, is_unavailable
from polydistill.serve.metering.timeutil import now_ms
from polydistill.serve.metering.write_batching import WriteBatcher

log = logging.getLogger("polydistill.serve")
T = TypeVar("T")
_OVERDUE_S = 60.0


@dataclass
class Ticket:
    """An admitted request: its reservation is live until settled or released. `lost` is
    set when the heartbeat finds the reservation swept; `cut` names why a stream was ended
    early by the gateway (its deadline)."""

    request_id: str
    key: KeyRecord
    endpoint: str
    streamed: bool
    headers: dict[str, str] = field(default_factory=dict)
    closed: bool = False
    lost: bool = False
    cut: str | None = None
    deadline: float = math.inf  # time.monotonic() by which the request must have ended


def _reset_text(reset_ms: int) -> str:
    return f"{reset_ms}ms" if reset_ms < 1000 else f"{reset_ms / 1000:.1f}s"


def rate_limit_headers(admission: Admission) -> dict[str, str]:
    """The x-ratelimit-* headers for the limits the key has."""
    headers = {}
    reset = _reset_text(admission.reset_ms)
    if admission.rpm is not None:
        headers["x-ratelimit-limit-requests"] = str(admission.rpm)
        remaining = max(admission.rpm - admission.window_requests, 0)
        headers["x-ratelimit-remaining-requests"] = str(remaining)
        headers["x-ratelimit-reset-requests"] = reset
    if admission.tpm is not None:
        headers["x-ratelimit-limit-tokens"] = str(admission.tpm)
        headers["x-ratelimit-remaining-tokens"] = str(
            max(admission.tpm - admission.window_tokens, 0)
        )
        headers["x-ratelimit-reset-tokens"] = reset
    return headers


def refusal_error(admission: Admission, tokens: int) -> ApiError:
    """The error a client sees for a refused admission."""
    headers = rate_limit_headers(admission)
    if admission.refusal == "revoked":
        return ApiError(401, "the API key has been revoked", code="invalid_api_key")
    if admission.refusal == "duplicate":
        return ApiError(
            409, "a request with this Idempotency-Key is in progress", code="idempotency_key_in_use"
        )
    if admission.refusal == "settled":
        return ApiError(
            409, "a request with this Idempotency-Key has completed", code="idempotency_key_reused"
        )
    if admission.refusal == "mismatch":
        return ApiError(
            422,
            "this Idempotency-Key was used with a different request body",
            code="idempotency_key_mismatch",
        )
    if admission.refusal == "budget":
        headers["x-should-retry"] = "false"
        return ApiError(
            429,
            "the key's budget is exhausted",
            type="insufficient_quota",
            code="insufficient_quota",
            headers=headers,
        )
    if admission.refusal == "too_large":
        headers["x-should-retry"] = "false"
        return ApiError(
            429,
            f"the request needs up to {tokens} tokens, more than the key's tokens per window",
            type="tokens",
            code="rate_limit_exceeded",
            headers=headers,
        )
    kind = "requests" if admission.refusal == "requests" else "tokens"
    headers["retry-after"] = str(max(1, math.ceil(admission.reset_ms / 1000)))
    headers["retry-after-ms"] = str(admission.reset_ms)
    return ApiError(
        429,
        f"rate limit reached for {kind} per window; retry after the reset",
        type=kind,
        code="rate_limit_exceeded",
        headers=headers,
    )


class Meter:
    """Meters one served model: its price, the rate window and the reservations it owns."""

    def __init__(
        self,
        db: sa.Engine,
        model_id: str,
        price: Price,
        window_s: int,
        on_settle: Callable[[int, int, int], None] | None = None,
        notices: tuple[str, ...] = (),
    ) -> None:
        self.db = db
        self.on_settle = on_settle
        self.model_id = model_id
        self.notices = ",".join(notices) or None  # recorded on each of the model's usage rows
        self.price = price
        self.window_s = window_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.writer = WriteBatcher(db)
        self.live: dict[str, Ticket] = {}  # admitted, not yet settled or released for good
        self.unwritten: dict[str, tuple[Callable[[Run], Any], int]] = {}  # to retry

    async def admit(
        self,
        key: KeyRecord,
        request_id: str,
        endpoint: str,
        prompt_tokens: int,
        max_completion_tokens: int,
        streamed: bool,
        fingerprint: str | None = None,
    ) -> Ticket:
        """Reserve the worst case of a request, or raise its refusal as an `ApiError`."""
        cost = request_cost(self.price, prompt_tokens, max_completion_tokens)
        tokens = prompt_tokens + max_completion_tokens
        reserve = functools.partial(
            ledger.reserve_in,
            key_id=key.id,
            request_id=request_id,
            cost_micros=cost,
            tokens=tokens,
            now_ms=now_ms(),
            window_s=self.window_s,
            owner=self.owner,
            fingerprint=fingerprint,
        )
        pending = self.writer.submit(reserve, key.id)
        try:
            admission = await asyncio.shield(pending)
        except asyncio.CancelledError:
            # The reservation is made regardless; nobody will settle it: give it back.
            pending.add_done_callback(functools.partial(self._release_orphan, key, request_id))
            raise
        # A reservation whose write failed (its commit lost in flight, at worst) is nobody's
        # ticket: the heartbeat never refreshes it and the sweep frees it after the TTL.
        if admission.refusal is not None:
            raise refusal_error(admission, tokens)
        ticket = Ticket(request_id, key, endpoint, streamed, rate_limit_headers(admission))
        self.live[request_id] = ticket
        return ticket

    def _release_orphan(self, key: KeyRecord, request_id: str, admitted: asyncio.Future) -> None:
        failed = admitted.cancelled() or admitted.exception() is not None
        if not failed and admitted.result().refusal is None:
            release = functools.partial(ledger.release_in, request_id=request_id)
            self.writer.submit(release, key.id)

    async def _write(self, ticket: Ticket, operation: Callable[[Run], T], keep: bool) -> T | None:
        """Run a closing write of `ticket`. If the database is unreachable: with `keep`, the
        write is kept for `maintain` to retry (None); without, the error is raised."""
        with anyio.CancelScope(shield=True):
            try:
                result = await asyncio.shield(self.writer.submit(operation, ticket.key.id))
            except Exception as error:
                if not is_unavailable(error):
                    self.live.pop(ticket.request_id, None)
                    raise
                if not keep:
                    raise
                log.warning("database unavailable: %s kept for retry", ticket.request_id)
                self.unwritten[ticket.request_id] = (operation, ticket.key.id)
                return None
        self.live.pop(ticket.request_id, None)
        return result

    async def settle(
        self,
        ticket: Ticket,
        prompt_tokens: int,
        completion_tokens: int,
        finish: str,
        response_body: str | None = None,
    ) -> bool:
        """Bill the actual usage: one ledger row. False if the request id was billed before
        (or, for a stream, if the row waits for the database to come back). A non-streamed
        request that cannot be billed raises the 503 and stays open for `release`."""
        if ticket.closed:
            return False
        ticket.closed = True
        cost = request_cost(self.price, prompt_tokens, completion_tokens)
        key = ticket.key
        usage = Usage(
            ticket.request_id, key.id, key.name, self.model_id, ticket.endpoint, prompt_tokens,
            completion_tokens, cost, ticket.streamed, finish, now_ms(), self.notices,
        )  # fmt: skip
        settle = functools.partial(ledger.settle_in, usage=usage, response_body=response_body)
        try:
            billed = await self._write(ticket, settle, keep=ticket.streamed)
        except Exception as error:
            if not is_unavailable(error):
                raise
            ticket.closed = False
            raise database_unavailable() from None
        if billed and self.on_settle is not None:
            self.on_settle(prompt_tokens, completion_tokens, cost)
        return bool(billed)

    async def release(self, ticket: Ticket) -> None:
        """Free the reservation without billing anything (now, or once the database is back)."""
        if ticket.closed:
            return
        ticket.closed = True
        release = functools.partial(ledger.release_in, request_id=ticket.request_id)
        await self._write(ticket, release, keep=True)

    async def maintain(self, ttl_s: int) -> None:
        """Retry the writes the database refused, send the heartbeat of the requests still
        running, and sweep the reservations of dead gateways. Raises if the database is
        still unreachable (the caller tries again later)."""
        await self._retry_unwritten()
        await self.heartbeat()
        await self.sweep(ttl_s)

    async def _retry_unwritten(self) -> None:
        for request_id, (operation, order) in list(self.unwritten.items()):
            with anyio.CancelScope(shield=True):
                await asyncio.shield(self.writer.submit(operation, order))
            del self.unwritten[request_id]
            self.live.pop(request_id, None)

    async def heartbeat(self) -> None:
        """Mark the reservations of the requests still running alive; flag those swept. A
        ticket long past its deadline is dropped (a bug left it open): the sweep frees it."""
        overdue = time.monotonic() - _OVERDUE_S
        for request_id, ticket in list(self.live.items()):
            if ticket.deadline < overdue and request_id not in self.unwritten:
                del self.live[request_id]
        if not self.live:
            return
        refresh = functools.partial(ledger.refresh_in, request_ids=list(self.live), now_ms=now_ms())
        lost = await asyncio.shield(self.writer.submit(refresh, -1))
        for request_id in lost:
            ticket = self.live.get(request_id)
            if ticket is not None and not ticket.closed:
                ticket.lost = True

    async def sweep(self, ttl_s: int) -> int:
        """Release reservations not refreshed for `ttl_s`, left by gateways that died."""
        return await run_sync(ledger.sweep_stale, self.db, now_ms() - ttl_s * 1000)

    async def release_all(self) -> int:
        """Finish the queued writes, then release what this process still holds (at
        shutdown)."""
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(Exception):
                await self._retry_unwritten()  # their last chance
            if self.unwritten:
                log.error(
                    "%d settlements or releases never reached the database", len(self.unwritten)
                )
            await run_sync(self.writer.close)
            return await run_sync(ledger.release_owned, self.db, self.owner)
