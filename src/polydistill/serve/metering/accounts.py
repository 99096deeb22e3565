"""API keys as accounts: create, list, revoke and rotate them, authenticate requests, and keep
the audit log of every admin action.

A named key carries the budget, the spend and the limits; its credentials are rows of
`key_secrets`, so that `rotate` can issue a new credential while the old one stays valid for a
grace period, both drawing on the same budget. Plaintext keys are returned once, never stored.
"""

import getpass
import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from polydistill.errors import UserError
from polydistill.lineage.rules import Policy
from polydistill.serve.metering.keys import digest_matches, key_digest, new_key, public_id_of
from polydistill.serve.metering.storage import (
    api_keys,
    audit_log,
    key_secrets,
    read_transaction,
    write_transaction,
)


@dataclass(frozen=True)
class KeyRecord:
    """An authenticated key: what admission and caps need. None fields mean unlimited or
    the server default."""

    id: int
    name: str
    budget_micros: int | None
    rpm: int | None
    tpm: int | None
    models: tuple[str, ...] | None
    max_tokens: int | None
    max_n: int | None
    max_logprobs: int | None
    policy: Policy | None = None  # the models it may use are those whose lineage passes


@dataclass(frozen=True)
class KeySummary:
    """A row of `keys list`."""

    name: str
    status: str
    key_prefixes: tuple[str, ...]
    budget_micros: int | None
    spent_micros: int
    reserved_micros: int
    rpm: int | None
    tpm: int | None
    models: tuple[str, ...] | None
    created_ms: int
    expires_ms: int | None
    policy: str | None = None  # "name sha256:<digest>"


def _record(row: Any) -> KeyRecord:
    return KeyRecord(
        id=row.id,
        name=row.name,
        budget_micros=row.budget_micros,
        rpm=row.rpm,
        tpm=row.tpm,
        models=tuple(json.loads(row.models)) if row.models else None,
        max_tokens=row.max_tokens,
        max_n=row.max_n,
        max_logprobs=row.max_logprobs,
        policy=Policy.model_validate_json(row.policy) if row.policy else None,
    )


def _audit(conn: sa.Connection, now_ms: int, action: str, name: str, detail: dict) -> None:
    conn.execute(
        audit_log.insert().values(
            time_ms=now_ms,
            actor=getpass.getuser(),
            action=action,
            key_name=name,
            detail=json.dumps(detail, sort_keys=True),
        )
    )


def _add_secret(conn: sa.Connection, server_secret: bytes, key_id: int, now_ms: int) -> str:
    key, public_id = new_key()
    conn.execute(
        key_secrets.insert().values(
            public_id=public_id,
            key_id=key_id,
            digest=key_digest(server_secret, key),
            created_ms=now_ms,
        )
    )
    return key


def create_key(
    db: sa.Engine,
    server_secret: bytes,
    name: str,
    now_ms: int,
    budget_micros: int | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
    models: list[str] | None = None,
    expires_ms: int | None = None,
    max_tokens: int | None = None,
    max_n: int | None = None,
    max_logprobs: int | None = None,
    policy: Policy | None = None,
) -> str:
    """Create the key `name`; return its plaintext (shown once). A `policy` is stored with its
    content and digest; the key may then use only the models whose lineage passes it."""
    if not name or len(name) > 200:
        raise UserError("a key name must have 1 to 200 characters")
    limits = {
        "budget_micros": budget_micros,
        "rpm": rpm,
        "tpm": tpm,
        "models": json.dumps(sorted(models)) if models else None,
        "expires_ms": expires_ms,
        "max_tokens": max_tokens,
        "max_n": max_n,
        "max_logprobs": max_logprobs,
        "policy": policy.model_dump_json() if policy is not None else None,
        "policy_digest": policy.digest if policy is not None else None,
    }
    with write_transaction(db) as conn:
        if conn.execute(sa.select(api_keys.c.id).where(api_keys.c.name == name)).first():
            raise UserError(f"a key named {name!r} already exists")
        key_id = conn.execute(
            api_keys.insert().values(name=name, created_ms=now_ms, **limits)
        ).inserted_primary_key[0]
        key = _add_secret(conn, server_secret, key_id, now_ms)
        _audit(conn, now_ms, "create", name, {k: v for k, v in limits.items() if v is not None})
    return key


def _key_id(conn: sa.Connection, name: str) -> int:
    row = conn.execute(
        sa.select(api_keys.c.id, api_keys.c.revoked_ms).where(api_keys.c.name == name)
    ).first()
    if row is None:
        raise UserError(f"no key named {name!r}")
    if row.revoked_ms is not None:
        raise UserError(f"the key {name!r} is revoked")
    return row.id


def revoke_key(db: sa.Engine, name: str, now_ms: int) -> None:
    """Revoke every credential of `name` at once; its usage history stays."""
    with write_transaction(db) as conn:
        key_id = _key_id(conn, name)
        conn.execute(api_keys.update().where(api_keys.c.id == key_id).values(revoked_ms=now_ms))
        _audit(conn, now_ms, "revoke", name, {})


def rotate_key(db: sa.Engine, server_secret: bytes, name: str, grace_s: int, now_ms: int) -> str:
    """Issue a new credential for `name`; the current ones expire after `grace_s` seconds."""
    if grace_s < 0:
        raise UserError("the grace period must not be negative")
    grace_end = now_ms + grace_s * 1000
    with write_transaction(db) as conn:
        key_id = _key_id(conn, name)
        conn.execute(
            key_secrets.update()
            .where(key_secrets.c.key_id == key_id)
            .where(sa.or_(key_secrets.c.expires_ms.is_(None), key_secrets.c.expires_ms > grace_end))
            .values(expires_ms=grace_end)
        )
        key = _add_secret(conn, server_secret, key_id, now_ms)
        _audit(conn, now_ms, "rotate", name, {"grace_s": grace_s})
    return key


_AUTHENTICATE = sa.text(
    "SELECT k.id, k.name, k.budget_micros, k.rpm, k.tpm, k.models, k.max_tokens, k.max_n,"
    " k.max_logprobs, k.policy, k.revoked_ms, k.expires_ms, s.digest, s.expires_ms AS secret_expiry"
    " FROM key_secrets s JOIN api_keys k ON k.id = s.key_id WHERE s.public_id = :public_id"
)


def authenticate(
    db: sa.Engine, server_secret: bytes, presented: str, now_ms: int
) -> KeyRecord | None:
    """The live key that `presented` is a valid credential of, else None."""
    public_id = public_id_of(presented)
    if public_id is None:
        return None
    with read_transaction(db) as conn:
        row = conn.execute(_AUTHENTICATE, {"public_id": public_id}).first()
    if row is None or not digest_matches(server_secret, presented, row.digest):
        return None
    expiries = (row.secret_expiry, row.expires_ms)
    if row.revoked_ms is not None or any(e is not None and e <= now_ms for e in expiries):
        return None
    return _record(row)


def list_keys(db: sa.Engine, now_ms: int) -> list[KeySummary]:
    """Every key with its spend, limits and the display prefixes of its live credentials."""
    with read_transaction(db) as conn:
        rows = conn.execute(sa.select(api_keys).order_by(api_keys.c.name)).all()
        secrets = conn.execute(sa.select(key_secrets)).all()
    summaries = []
    for row in rows:
        live = tuple(
            f"pd_{s.public_id}_…"
            for s in secrets
            if s.key_id == row.id and (s.expires_ms is None or s.expires_ms > now_ms)
        )
        expired = row.expires_ms is not None and row.expires_ms <= now_ms
        status = "revoked" if row.revoked_ms else "expired" if expired else "active"
        record = _record(row)
        summaries.append(
            KeySummary(
                name=row.name,
                status=status,
                key_prefixes=live,
                budget_micros=row.budget_micros,
                spent_micros=row.spent_micros,
                reserved_micros=row.reserved_micros,
                rpm=row.rpm,
                tpm=row.tpm,
                models=record.models,
                created_ms=row.created_ms,
                expires_ms=row.expires_ms,
                policy=f"{record.policy.name} sha256:{row.policy_digest}"
                if record.policy
                else None,
            )
        )
    return summaries


def audit_entries(db: sa.Engine) -> list[dict[str, Any]]:
    """The audit log, oldest first."""
    with read_transaction(db) as conn:
        rows = conn.execute(sa.select(audit_log).order_by(audit_log.c.id)).all()
    return [{**row._asdict(), "detail": json.loads(row.detail)} for row in rows]
