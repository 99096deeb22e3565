"""The SQL of metering: reserve a request's worst case, settle it into the usage ledger, or
release it; sweep reservations whose request died; read the ledger back.

Every admission is one conditional `UPDATE` of the key's row, which checks revocation, budget
and both rate-limit windows and adds the reservation in the same statement, so that concurrent
requests, on one gateway or several sharing a PostgreSQL database, can never together pass a
limit that each passes alone. Settling inserts the ledger row first: its primary key, the
request id, makes a second settlement of the same request a no-op that only releases, so a
settlement retried after a lost connection never bills twice.

A reservation lives as long as its request: the gateway that made it refreshes it
(`refresh_in`, the heartbeat) while the request runs, and `sweep_stale` frees only those not
refreshed for the reservation TTL, i.e. those of requests whose gateway died. A settlement
that finds its reservation gone anyway (swept while the gateway could not reach the database)
is billed at most the key's remaining headroom, so that settling never takes a key past its
budget.

An `Idempotency-Key` is claimed with the fingerprint of its request body at admission: the
same key with another body is refused (`mismatch`), a key whose request is in flight or
already billed is refused (`duplicate`, `settled`) before anything is generated.

Each operation exists twice: `reserve_in(run, ...)` inside a transaction the caller holds
(the gateway batches many requests' operations into one), and `reserve(db, ...)` in a
transaction of its own.
"""

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import sqlalchemy as sa

from polydistill.serve.metering.storage import (
    Run,
    Statement,
    idempotency_keys,
    idempotent_responses,
    raw_write_transaction,
    read_transaction,
    reservations,
    usage_ledger,
)

Refusal = Literal[
    "revoked", "budget", "requests", "tokens", "too_large", "duplicate", "settled", "mismatch"
]


@dataclass(frozen=True)
class Admission:
    """Outcome of `reserve`, with the rate window's state for the x-ratelimit headers."""

    refusal: Refusal | None
    rpm: int | None
    tpm: int | None
    window_requests: int
    window_tokens: int
    reset_ms: int


# The hot statements are plain SQL that SQLite and PostgreSQL both accept, run through the raw
# driver cursor (see `storage.Statement`). None of them raises on a repeated request id
# (`ON CONFLICT DO NOTHING` and row counts instead), so that many requests can share one
# transaction (`batching.WriteBatcher`) without one's failure undoing the others'.
_HOLD = Statement(
    "INSERT INTO reservations (request_id, key_id, amount_micros, tokens, window_start, owner,"
    " created_ms) VALUES (:request_id, :key_id, :cost, :tokens, :window, :owner, :now)"
    " ON CONFLICT (request_id) DO NOTHING"
)
_ADMIT = Statement(
    """
    UPDATE api_keys SET
      reserved_micros = reserved_micros + :cost,
      window_requests = CASE WHEN window_start = :window THEN window_requests + 1 ELSE 1 END,
      window_tokens = CASE WHEN window_start = :window THEN window_tokens + :tokens
                      ELSE :tokens END,
      window_start = :window
    WHERE id = :key_id AND revoked_ms IS NULL
      AND (budget_micros IS NULL OR spent_micros + reserved_micros + :cost <= budget_micros)
      AND (rpm IS NULL OR window_start <> :window OR window_requests < rpm)
      AND (tpm IS NULL
           OR (CASE WHEN window_start = :window THEN window_tokens ELSE 0 END) + :tokens <= tpm)
    RETURNING rpm, tpm, window_requests, window_tokens
    """
)
_DROP_HOLD = Statement("DELETE FROM reservations WHERE request_id = :request_id")
_ACCOUNT = Statement(
    "SELECT revoked_ms, budget_micros, spent_micros, reserved_micros, rpm, tpm, window_start,"
    " window_requests, window_tokens FROM api_keys WHERE id = :key_id"
)
_UNHOLD = Statement(
    "DELETE FROM reservations WHERE request_id = :request_id"
    " RETURNING key_id, amount_micros, tokens, window_start"
)
_SPEND = Statement(
    """
    UPDATE api_keys SET
      reserved_micros = reserved_micros - :amount,
      spent_micros = spent_micros + :spent,
      window_tokens = CASE WHEN window_start = :window THEN window_tokens - :unused
                      ELSE window_tokens END
    WHERE id = :key_id
    """
)
_SPEND_UNRESERVED = Statement(
    "UPDATE api_keys SET spent_micros = spent_micros + :spent WHERE id = :key_id"
)
_RECORD = Statement(
    "INSERT INTO usage_ledger (request_id, key_id, key_name, model, endpoint, prompt_tokens,"
    " completion_tokens, cost_micros, streamed, finish, created_ms, notices) VALUES"
    " (:request_id, :key_id, :key_name, :model, :endpoint, :prompt_tokens, :completion_tokens,"
    " :cost_micros, :streamed, :finish, :created_ms, :notices) ON CONFLICT (request_id) DO NOTHING"
)
_LOCK_ACCOUNT = Statement(
    "UPDATE api_keys SET spent_micros = spent_micros WHERE id = :key_id"
    " RETURNING budget_micros, spent_micros, reserved_micros"
)
_CAP_ROW = Statement("UPDATE usage_ledger SET cost_micros = :cost WHERE request_id = :request_id")
_CLAIM = Statement(
    "INSERT INTO idempotency_keys (request_id, fingerprint, created_ms)"
    " VALUES (:request_id, :fingerprint, :now) ON CONFLICT (request_id) DO NOTHING"
)
_CLAIMED = Statement("SELECT fingerprint FROM idempotency_keys WHERE request_id = :request_id")
_BILLED = Statement("SELECT 1 FROM usage_ledger WHERE request_id = :request_id")
_REFRESH = Statement("UPDATE reservations SET created_ms = :now WHERE request_id = :request_id")
_KEEP_BODY = Statement(
    "INSERT INTO idempotent_responses (request_id, body) VALUES (:request_id, :body)"
    " ON CONFLICT (request_id) DO NOTHING"
)


class _Account(NamedTuple):
    revoked_ms: int | None
    budget_micros: int | None
    spent_micros: int
    reserved_micros: int
    rpm: int | None
    tpm: int | None
    window_start: int
    window_requests: int
    window_tokens: int


def _window(now_ms: int, window_s: int) -> tuple[int, int]:
    """The current window's index and the milliseconds until it ends."""
    length = window_s * 1000
    return now_ms // length, length - now_ms % length


def reserve_in(
    run: Run,
    key_id: int,
    request_id: str,
    cost_micros: int,
    tokens: int,
    now_ms: int,
    window_s: int,
    owner: str,
    fingerprint: str | None = None,
) -> Admission:
    """Hold `cost_micros` and `tokens` for `request_id` if the key's limits allow it, within
    the caller's transaction. `fingerprint` (of the request body) marks an idempotent
    request id, which is claimed by its first body and refused while or after it runs."""
    window, reset_ms = _window(now_ms, window_s)
    values = {"cost": cost_micros, "tokens": tokens, "window": window, "key_id": key_id}
    hold = {**values, "request_id": request_id, "owner": owner, "now": now_ms}
    if fingerprint is not None:
        claim = {"request_id": request_id, "fingerprint": fingerprint, "now": now_ms}
        if run(_CLAIM, claim).rowcount == 0:
            (claimed,) = run(_CLAIMED, {"request_id": request_id}).fetchone()
            if claimed != fingerprint:
                return Admission("mismatch", None, None, 0, 0, reset_ms)
    if run(_HOLD, hold).rowcount == 0:
        return Admission("duplicate", None, None, 0, 0, reset_ms)
    # Checked after the hold: on PostgreSQL the hold waits for a settlement of the same id in
    # flight, whose ledger row this statement's fresh snapshot then sees.
    if fingerprint is not None and run(_BILLED, {"request_id": request_id}).fetchone():
        run(_DROP_HOLD, {"request_id": request_id})
        return Admission("settled", None, None, 0, 0, reset_ms)
    admitted = run(_ADMIT, values).fetchone()
    if admitted is not None:
        rpm, tpm, window_requests, window_tokens = admitted
        return Admission(None, rpm, tpm, window_requests, window_tokens, reset_ms)
    run(_DROP_HOLD, {"request_id": request_id})
    account = _Account(*run(_ACCOUNT, {"key_id": key_id}).fetchone())
    return _refusal(account, window, cost_micros, tokens, reset_ms)


def reserve(
    db: sa.Engine,
    key_id: int,
    request_id: str,
    cost_micros: int,
    tokens: int,
    now_ms: int,
    window_s: int,
    owner: str,
    fingerprint: str | None = None,
) -> Admission:
    """`reserve_in` in a transaction of its own."""
    with raw_write_transaction(db) as run:
        return reserve_in(
            run, key_id, request_id, cost_micros, tokens, now_ms, window_s, owner, fingerprint
        )


def _refusal(row: _Account, window: int, cost: int, tokens: int, reset_ms: int) -> Admission:
    used_requests = row.window_requests if row.window_start == window else 0
    used_tokens = row.window_tokens if row.window_start == window else 0
    refusal: Refusal
    over_budget = (
        row.budget_micros is not None
        and row.spent_micros + row.reserved_micros + cost > row.budget_micros
    )
    if row.revoked_ms is not None:
        refusal = "revoked"
    elif over_budget:
        refusal = "budget"
    elif row.tpm is not None and tokens > row.tpm:
        refusal = "too_large"
    elif row.rpm is not None and used_requests >= row.rpm:
        refusal = "requests"
    else:
        refusal = "tokens"
    return Admission(refusal, row.rpm, row.tpm, used_requests, used_tokens, reset_ms)


def _unhold(run: Run, request_id: str, actual_tokens: int, spent: int) -> bool:
    """Drop the reservation of `request_id` and move `spent` into the key's spend."""
    held = run(_UNHOLD, {"request_id": request_id}).fetchone()
    if held is None:
        return False
    key_id, amount, tokens, window = held
    unused = max(tokens - actual_tokens, 0)
    spend = {"amount": amount, "spent": spent, "window": window, "unused": unused, "key_id": key_id}
    run(_SPEND, spend)
    return True


@dataclass(frozen=True)
class Usage:
    """What one settled request is billed for: its ledger row."""

    request_id: str
    key_id: int
    key_name: str
    model: str
    endpoint: str
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int
    streamed: bool
    finish: str
    created_ms: int
    notices: str | None = None  # the licences whose notices applied to the model, comma-joined


def settle_in(run: Run, usage: Usage, response_body: str | None = None) -> bool:
    """Write the ledger row of `usage.request_id` and turn its reservation into spend, within
    the caller's transaction. False (and the reservation released) if the request was
    already settled."""
    request_id = usage.request_id
    row = {
        "request_id": request_id,
        "key_id": usage.key_id,
        "key_name": usage.key_name,
        "model": usage.model,
        "endpoint": usage.endpoint,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cost_micros": usage.cost_micros,
        "streamed": usage.streamed,
        "finish": usage.finish,
        "created_ms": usage.created_ms,
        "notices": usage.notices,
    }  # fmt: skip  (dataclasses.asdict deep-copies: 90 µs a row)
    if run(_RECORD, row).rowcount == 0:
        _unhold(run, request_id, 0, 0)
        return False
    tokens = usage.prompt_tokens + usage.completion_tokens
    if not _unhold(run, request_id, tokens, usage.cost_micros):
        _spend_unreserved(run, usage)
    if response_body is not None:
        run(_KEEP_BODY, {"request_id": request_id, "body": response_body})
    return True


def _spend_unreserved(run: Run, usage: Usage) -> None:
    """Bill a request whose reservation was swept (its gateway lost the database for longer
    than the TTL): at most the key's headroom, never past its budget."""
    budget, spent, reserved = run(_LOCK_ACCOUNT, {"key_id": usage.key_id}).fetchone()
    cost = usage.cost_micros
    if budget is not None:
        cost = max(0, min(cost, budget - spent - reserved))
    if cost != usage.cost_micros:
        run(_CAP_ROW, {"cost": cost, "request_id": usage.request_id})
    run(_SPEND_UNRESERVED, {"spent": cost, "key_id": usage.key_id})


def settle(
    db: sa.Engine,
    request_id: str,
    key_id: int,
    key_name: str,
    model: str,
    endpoint: str,
    prompt_tokens: int,
    completion_tokens: int,
    cost_micros: int,
    streamed: bool,
    finish: str,
    now_ms: int,
    response_body: str | None = None,
) -> bool:
    """`settle_in` in a transaction of its own."""
    usage = Usage(
        request_id, key_id, key_name, model, endpoint, prompt_tokens, completion_tokens,
        cost_micros, streamed, finish, now_ms,
    )  # fmt: skip
    with raw_write_transaction(db) as run:
        return settle_in(run, usage, response_body)


def release_in(run: Run, request_id: str) -> bool:
    """Give back the whole reservation of `request_id` (nothing billed). False if none."""
    return _unhold(run, request_id, 0, 0)


def release(db: sa.Engine, request_id: str) -> bool:
    """`release_in` in a transaction of its own."""
    with raw_write_transaction(db) as run:
        return release_in(run, request_id)


def refresh_in(run: Run, request_ids: list[str], now_ms: int) -> set[str]:
    """The heartbeat: mark the reservations of `request_ids` (requests still running) alive
    at `now_ms`. Returns the ids whose reservation is gone (swept)."""
    return {
        request_id
        for request_id in request_ids
        if run(_REFRESH, {"now": now_ms, "request_id": request_id}).rowcount == 0
    }


def _release_where(db: sa.Engine, condition: sa.ColumnElement[bool]) -> int:
    with read_transaction(db) as conn:
        ids = conn.execute(sa.select(reservations.c.request_id).where(condition)).scalars().all()
    return sum(release(db, request_id) for request_id in ids)


def sweep_stale(db: sa.Engine, older_than_ms: int) -> int:
    """Release reservations last refreshed before `older_than_ms`: their requests died with a
    gateway."""
    return _release_where(db, reservations.c.created_ms < older_than_ms)


def release_owned(db: sa.Engine, owner: str) -> int:
    """Release every reservation `owner` (one gateway process) still holds, at shutdown."""
    return _release_where(db, reservations.c.owner == owner)


class StoredRequest(NamedTuple):
    """What the database knows of an idempotent request id."""

    billed: bool
    body: str | None
    fingerprint: str | None


def stored_response(db: sa.Engine, request_id: str) -> StoredRequest:
    """Whether `request_id` is in the ledger, the response body kept for replay if any, and
    the fingerprint of the body that claimed it."""
    with read_transaction(db) as conn:
        billed = conn.execute(
            sa.select(usage_ledger.c.request_id).where(usage_ledger.c.request_id == request_id)
        ).first()
        body = conn.execute(
            sa.select(idempotent_responses.c.body).where(
                idempotent_responses.c.request_id == request_id
            )
        ).scalar()
        fingerprint = conn.execute(
            sa.select(idempotency_keys.c.fingerprint).where(
                idempotency_keys.c.request_id == request_id
            )
        ).scalar()
    return StoredRequest(billed is not None, body, fingerprint)


def usage_rows(
    db: sa.Engine, key_name: str | None = None, since_ms: int | None = None
) -> list[dict[str, Any]]:
    """Ledger rows, oldest first, optionally for one key and from a time on."""
    query = sa.select(usage_ledger).order_by(usage_ledger.c.created_ms, usage_ledger.c.request_id)
    if key_name is not None:
        query = query.where(usage_ledger.c.key_name == key_name)
    if since_ms is not None:
        query = query.where(usage_ledger.c.created_ms >= since_ms)
    with read_transaction(db) as conn:
        return [row._asdict() for row in conn.execute(query)]
