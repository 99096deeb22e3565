"""The SQL of metering: reserve a request's worst case, settle it into the usage ledger, or
release it; sweep reservations whose request died; read the ledger back.

Every admission is one conditional `UPDATE` of the key's row, which checks revocation, budget
and both rate-limit windows and adds the reservation in the same statement, so that concurrent
requests, on one gateway or several sharing a PostgreSQL database, can never together pass a
limit that each passes alone. Settling inserts the ledger row first: its primary key, the
request id, makes a second settlement of the same request fail and roll back whole.
"""

from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa

from polydistill.serve.storage import (
    api_keys,
    idempotent_responses,
    read_transaction,
    reservations,
    usage_ledger,
    write_transaction,
)

Refusal = Literal["revoked", "budget", "requests", "tokens", "too_large", "duplicate"]


@dataclass(frozen=True)
class Admission:
    """Outcome of `reserve`, with the rate window's state for the x-ratelimit headers."""

    refusal: Refusal | None
    rpm: int | None
    tpm: int | None
    window_requests: int
    window_tokens: int
    reset_ms: int


def _window(now_ms: int, window_s: int) -> tuple[int, int]:
    """The current window's index and the milliseconds until it ends."""
    length = window_s * 1000
    return now_ms // length, length - now_ms % length


def reserve(
    db: sa.Engine,
    key_id: int,
    request_id: str,
    cost_micros: int,
    tokens: int,
    now_ms: int,
    window_s: int,
    owner: str,
) -> Admission:
    """Hold `cost_micros` and `tokens` for `request_id` if the key's limits allow it."""
    window, reset_ms = _window(now_ms, window_s)
    keys = api_keys.c
    same_window = keys.window_start == window
    requests_so_far = sa.case((same_window, keys.window_requests), else_=0)
    tokens_so_far = sa.case((same_window, keys.window_tokens), else_=0)
    admit = (
        api_keys.update()
        .where(keys.id == key_id, keys.revoked_ms.is_(None))
        .where(
            sa.or_(
                keys.budget_micros.is_(None),
                keys.spent_micros + keys.reserved_micros + cost_micros <= keys.budget_micros,
            )
        )
        .where(sa.or_(keys.rpm.is_(None), requests_so_far < keys.rpm))
        .where(sa.or_(keys.tpm.is_(None), tokens_so_far + tokens <= keys.tpm))
        .values(
            reserved_micros=keys.reserved_micros + cost_micros,
            window_requests=requests_so_far + 1,
            window_tokens=tokens_so_far + tokens,
            window_start=window,
        )
        .returning(keys.rpm, keys.tpm, keys.window_requests, keys.window_tokens)
    )
    try:
        with write_transaction(db) as conn:
            row = conn.execute(admit).first()
            if row is not None:
                conn.execute(
                    reservations.insert().values(
                        request_id=request_id,
                        key_id=key_id,
                        amount_micros=cost_micros,
                        tokens=tokens,
                        window_start=window,
                        owner=owner,
                        created_ms=now_ms,
                    )
                )
                return Admission(
                    None, row.rpm, row.tpm, row.window_requests, row.window_tokens, reset_ms
                )
            current = conn.execute(sa.select(api_keys).where(keys.id == key_id)).one()
    except sa.exc.IntegrityError:
        return Admission("duplicate", None, None, 0, 0, reset_ms)
    return _refusal(current, window, cost_micros, tokens, reset_ms)


def _refusal(row: Any, window: int, cost: int, tokens: int, reset_ms: int) -> Admission:
    used_requests = row.window_requests if row.window_start == window else 0
    used_tokens = row.window_tokens if row.window_start == window else 0
    refusal: Refusal
    if row.revoked_ms is not None:
        refusal = "revoked"
    elif (
        row.budget_micros is not None
        and row.spent_micros + row.reserved_micros + cost > row.budget_micros
    ):
        refusal = "budget"
    elif row.tpm is not None and tokens > row.tpm:
        refusal = "too_large"
    elif row.rpm is not None and used_requests >= row.rpm:
        refusal = "requests"
    else:
        refusal = "tokens"
    return Admission(refusal, row.rpm, row.tpm, used_requests, used_tokens, reset_ms)


def _unhold(conn: sa.Connection, request_id: str, actual_tokens: int, spent: int) -> bool:
    """Drop the reservation of `request_id` and move `spent` into the key's spend."""
    held = conn.execute(
        reservations.delete()
        .where(reservations.c.request_id == request_id)
        .returning(
            reservations.c.key_id,
            reservations.c.amount_micros,
            reservations.c.tokens,
            reservations.c.window_start,
        )
    ).first()
    if held is None:
        return False
    keys = api_keys.c
    unused_tokens = max(held.tokens - actual_tokens, 0)
    conn.execute(
        api_keys.update()
        .where(keys.id == held.key_id)
        .values(
            reserved_micros=keys.reserved_micros - held.amount_micros,
            spent_micros=keys.spent_micros + spent,
            window_tokens=sa.case(
                (keys.window_start == held.window_start, keys.window_tokens - unused_tokens),
                else_=keys.window_tokens,
            ),
        )
    )
    return True


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
    """Write the ledger row of `request_id` and turn its reservation into spend. False (and
    the reservation released) if the request was already settled."""
    row = {
        "request_id": request_id,
        "key_id": key_id,
        "key_name": key_name,
        "model": model,
        "endpoint": endpoint,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "cost_micros": cost_micros,
        "streamed": streamed,
        "finish": finish,
        "created_ms": now_ms,
    }
    try:
        with write_transaction(db) as conn:
            conn.execute(usage_ledger.insert().values(**row))
            if not _unhold(conn, request_id, prompt_tokens + completion_tokens, cost_micros):
                # The reservation was swept as stale: the tokens were still produced.
                conn.execute(
                    api_keys.update()
                    .where(api_keys.c.id == key_id)
                    .values(spent_micros=api_keys.c.spent_micros + cost_micros)
                )
            if response_body is not None:
                conn.execute(
                    idempotent_responses.insert().values(request_id=request_id, body=response_body)
                )
    except sa.exc.IntegrityError:
        release(db, request_id)
        return False
    return True


def release(db: sa.Engine, request_id: str) -> bool:
    """Give back the whole reservation of `request_id` (nothing billed). False if none."""
    with write_transaction(db) as conn:
        return _unhold(conn, request_id, 0, 0)


def _release_where(db: sa.Engine, condition: sa.ColumnElement[bool]) -> int:
    with read_transaction(db) as conn:
        ids = conn.execute(sa.select(reservations.c.request_id).where(condition)).scalars().all()
    return sum(release(db, request_id) for request_id in ids)


def sweep_stale(db: sa.Engine, older_than_ms: int) -> int:
    """Release reservations made before `older_than_ms`: their requests died with a gateway."""
    return _release_where(db, reservations.c.created_ms < older_than_ms)


def release_owned(db: sa.Engine, owner: str) -> int:
    """Release every reservation `owner` (one gateway process) still holds, at shutdown."""
    return _release_where(db, reservations.c.owner == owner)


def stored_response(db: sa.Engine, request_id: str) -> tuple[bool, str | None]:
    """(whether `request_id` is in the ledger, the response body kept for replay if any)."""
    with read_transaction(db) as conn:
        billed = conn.execute(
            sa.select(usage_ledger.c.request_id).where(usage_ledger.c.request_id == request_id)
        ).first()
        body = conn.execute(
            sa.select(idempotent_responses.c.body).where(
                idempotent_responses.c.request_id == request_id
            )
        ).scalar()
    return billed is not None, body


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
