"""API key material: generation, the HMAC-SHA-256 digest stored in place of a key, and the
server secret that keys the digest.

A key reads `pd_<public id>_<secret>`. The public id (12 hex digits) finds the row; the
stored digest is HMAC-SHA-256(server secret, whole key), compared in constant time. Without
the server secret a leaked database does not even allow offline guessing of keys.

The server secret comes from `POLYDISTILL_SERVER_SECRET`, else from a secret file: by default,
for SQLite, `<database file>.secret`, created (mode 0600) on first use.
"""

import hashlib
import hmac
import os
import secrets
from pathlib import Path

import sqlalchemy as sa

from polydistill.errors import UserError

KEY_PREFIX = "pd_"
SECRET_ENV = "POLYDISTILL_SERVER_SECRET"
_PUBLIC_ID_HEX = 12


def new_key() -> tuple[str, str]:
    """A fresh (key, public id) pair: 48 random bytes in all, 256 bits of them secret."""
    public_id = secrets.token_hex(_PUBLIC_ID_HEX // 2)
    return f"{KEY_PREFIX}{public_id}_{secrets.token_urlsafe(32)}", public_id


def public_id_of(key: str) -> str | None:
    """The public id of a well-formed key, else None."""
    if not key.startswith(KEY_PREFIX):
        return None
    public_id, separator, secret = key[len(KEY_PREFIX) :].partition("_")
    if not separator or len(public_id) != _PUBLIC_ID_HEX or len(secret) < 32:
        return None
    return public_id


def key_digest(server_secret: bytes, key: str) -> str:
    """The hex HMAC-SHA-256 of `key` under `server_secret`: what the database stores."""
    return hmac.new(server_secret, key.encode("utf-8"), hashlib.sha256).hexdigest()


def digest_matches(server_secret: bytes, key: str, stored_digest: str) -> bool:
    """Constant-time check of a presented key against a stored digest."""
    return hmac.compare_digest(key_digest(server_secret, key), stored_digest)


def default_secret_file(db_url: str) -> Path | None:
    """`<database file>.secret` for a SQLite file URL, None for other databases."""
    if not db_url.startswith("sqlite:///"):
        return None
    database = sa.engine.make_url(db_url).database  # without a ?timeout= query
    if not database or database == ":memory:":
        return None
    return Path(database + ".secret")


def load_server_secret(db_url: str, secret_file: Path | None = None) -> bytes:
    """The server secret from the environment, `secret_file` or the default file (created)."""
    from_env = os.environ.get(SECRET_ENV)
    if from_env:
        if len(from_env) < 32:
            raise UserError(f"{SECRET_ENV} must hold at least 32 characters")
        return from_env.encode("utf-8")
    path = secret_file or default_secret_file(db_url)
    if path is None:
        raise UserError(f"set {SECRET_ENV} or pass --secret-file for a non-SQLite database")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it just now
            pass
        else:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_hex(32))
    secret = path.read_text().strip()
    if len(secret) < 32:
        raise UserError(f"server secret file {path} must hold at least 32 characters")
    return secret.encode("utf-8")
