"""The gateway's tables and database connections (SQLite by default, PostgreSQL for replicas).

Tables: `api_keys` (one per named key: budget, spend, live reservations, limits, its lineage
policy with the policy's digest, and the current rate window), `key_secrets` (the HMAC
digests of a key's credentials; rotation adds one), `reservations` (worst-case holds of
requests in flight; `created_ms` is the last time the owning gateway said the request was
alive: set at admission, refreshed by its heartbeat), `usage_ledger` (append-only, one row per
billed request, keyed by request id, with the licences whose notices applied to the model that
answered), `idempotency_keys` (the fingerprint of the body first sent with an
`Idempotency-Key`), `idempotent_responses` (bodies replayed for a repeated `Idempotency-Key`)
and `audit_log` (admin actions). Money columns are integer micro-dollars; times are integer
milliseconds since the epoch. `open_database` adds the columns a ledger made by an earlier
version lacks.

SQLite runs in WAL mode and takes its write lock at `BEGIN IMMEDIATE`, so that a transaction
that reads and then writes cannot be overtaken; PostgreSQL relies on conditional `UPDATE`s,
which lock the row they change.
"""

import contextlib
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import sqlalchemy as sa

from polydistill.errors import UserError

metadata = sa.MetaData()

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("expires_ms", sa.BigInteger),
    sa.Column("revoked_ms", sa.BigInteger),
    sa.Column("budget_micros", sa.BigInteger),
    sa.Column("spent_micros", sa.BigInteger, nullable=False, default=0),
    sa.Column("reserved_micros", sa.BigInteger, nullable=False, default=0),
    sa.Column("rpm", sa.Integer),
    sa.Column("tpm", sa.Integer),
    sa.Column("models", sa.Text),
    sa.Column("max_tokens", sa.Integer),
    sa.Column("max_n", sa.Integer),
    sa.Column("max_logprobs", sa.Integer),
    sa.Column("policy", sa.Text),  # the key's lineage policy (JSON), checked per model
    sa.Column("policy_digest", sa.String(64)),
    sa.Column("window_start", sa.BigInteger, nullable=False, default=0),
    sa.Column("window_requests", sa.Integer, nullable=False, default=0),
    sa.Column("window_tokens", sa.BigInteger, nullable=False, default=0),
)

key_secrets = sa.Table(
    "key_secrets",
    metadata,
    sa.Column("public_id", sa.String(32), primary_key=True),
    sa.Column("key_id", sa.Integer, sa.ForeignKey("api_keys.id"), nullable=False, index=True),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("expires_ms", sa.BigInteger),
)

reservations = sa.Table(
    "reservations",
    metadata,
    sa.Column("request_id", sa.String(80), primary_key=True),
    sa.Column("key_id", sa.Integer, sa.ForeignKey("api_keys.id"), nullable=False),
    sa.Column("amount_micros", sa.BigInteger, nullable=False),
    sa.Column("tokens", sa.BigInteger, nullable=False),
    sa.Column("window_start", sa.BigInteger, nullable=False),
    sa.Column("owner", sa.String(80), nullable=False, index=True),
    sa.Column("created_ms", sa.BigInteger, nullable=False, index=True),
)

usage_ledger = sa.Table(
    "usage_ledger",
    metadata,
    sa.Column("request_id", sa.String(80), primary_key=True),
    sa.Column("key_id", sa.Integer, sa.ForeignKey("api_keys.id"), nullable=False),
    sa.Column("key_name", sa.String(200), nullable=False, index=True),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("endpoint", sa.String(80), nullable=False),
    sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
    sa.Column("completion_tokens", sa.BigInteger, nullable=False),
    sa.Column("cost_micros", sa.BigInteger, nullable=False),
    sa.Column("streamed", sa.Boolean, nullable=False),
    sa.Column("finish", sa.String(40), nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False, index=True),
    sa.Column("notices", sa.String(400)),  # licences whose notices applied (ids, comma-joined)
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("request_id", sa.String(80), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
)

idempotent_responses = sa.Table(
    "idempotent_responses",
    metadata,
    sa.Column("request_id", sa.String(80), primary_key=True),
    sa.Column("body", sa.Text, nullable=False),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("time_ms", sa.BigInteger, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("action", sa.String(40), nullable=False),
    sa.Column("key_name", sa.String(200), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
)

# One lock per SQLite file: threads of one process queue here instead of polling SQLite's
# busy handler; BEGIN IMMEDIATE still guards against other processes (the CLI, replicas).
_sqlite_write_locks: dict[str, threading.Lock] = {}
_sqlite_locks_guard = threading.Lock()


def redacted_url(url: str) -> str:
    """`url` with its password (if any) shown as `***`: the only form a URL is ever printed
    or logged in."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):
        scheme = url.partition("://")[0] if "://" in url else "?"
        return f"{scheme}://(unparsable URL)"


def scrub(text: str, url: str) -> str:
    """`text` (a driver's error message, say) with the password of `url` cut out, in the
    forms it may take (as written, percent-decoded, percent-encoded)."""
    try:
        password = sa.engine.make_url(url).password
    except (sa.exc.ArgumentError, ValueError):
        password = None
    if not password:
        return text
    for form in sorted({password, quote(password, safe="")}, key=len, reverse=True):
        text = text.replace(form, "***")
    return text


def database_url(value: str) -> str:
    """A SQLAlchemy URL from a URL or a plain path (a SQLite file); PostgreSQL via psycopg 3."""
    if "://" not in value:
        return f"sqlite:///{Path(value).expanduser().resolve()}"
    for scheme in ("postgresql://", "postgres://"):
        if value.startswith(scheme):
            return "postgresql+psycopg://" + value[len(scheme) :]
    if value.startswith(("sqlite:///", "postgresql+psycopg://")):
        return value
    scheme = value.partition("://")[0]
    raise UserError(
        f"unsupported database URL scheme {scheme!r}: use a path, sqlite:/// or postgresql://"
    )


def _configure_sqlite(engine: sa.Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None  # let SQLAlchemy's BEGIN below decide
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def on_begin(connection: sa.Connection) -> None:
        read_only = connection.get_execution_options().get("read_only", False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def _add_missing_columns(engine: sa.Engine) -> None:
    """The schema migration of a ledger made by an earlier version: the nullable columns added
    since (`api_keys.policy`, `policy_digest`, `usage_ledger.notices`) are added to it. Two
    processes may race here (workers, replicas): a column the other added is no error."""
    inspector = sa.inspect(engine)
    for table in metadata.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            kind = column.type.compile(engine.dialect)
            exists = " IF NOT EXISTS" if engine.dialect.name == "postgresql" else ""
            statement = f"ALTER TABLE {table.name} ADD COLUMN{exists} {column.name} {kind}"
            try:
                with engine.begin() as conn:
                    conn.execute(sa.text(statement))
            except sa.exc.OperationalError as error:
                if "duplicate column" not in str(error):
                    raise


def open_database(url: str) -> sa.Engine:
    """Connect to `url` (see `database_url`) and create the tables if missing."""
    url = database_url(url)
    try:
        if url.startswith("sqlite"):
            Path(sa.engine.make_url(url).database or "").parent.mkdir(parents=True, exist_ok=True)
            # How long a writer waits for another's lock: 60 s unless the URL says (?timeout=).
            timeout = {} if "timeout=" in url else {"timeout": 60}
            engine = sa.create_engine(
                url, connect_args={**timeout, "check_same_thread": False}, pool_size=8
            )
            _configure_sqlite(engine)
        else:
            engine = sa.create_engine(url, pool_size=16, max_overflow=16, pool_pre_ping=True)
        metadata.create_all(engine)
        _add_missing_columns(engine)
    except (sa.exc.OperationalError, sa.exc.ArgumentError, ValueError) as error:
        reason = scrub(str(getattr(error, "orig", None) or error), url)
        reason = " ".join(reason.split())
        raise UserError(f"cannot open database {redacted_url(url)}: {reason}") from error
    return engine


def is_unavailable(error: BaseException) -> bool:
    """Whether `error` says the database cannot be reached or used right now (connection
    lost or refused, file locked past the busy timeout, pool exhausted), as opposed to a bug
    in a statement."""
    unavailable = (
        sa.exc.OperationalError,
        sa.exc.InterfaceError,
        sa.exc.TimeoutError,
        sqlite3.OperationalError,
        psycopg.OperationalError,
        psycopg.InterfaceError,
        DatabaseBusy,
    )
    return isinstance(error, unavailable)


def _sqlite_write_lock(engine: sa.Engine) -> "threading.Lock | None":
    if engine.dialect.name != "sqlite":
        return None
    with _sqlite_locks_guard:
        return _sqlite_write_locks.setdefault(str(engine.url), threading.Lock())


@contextmanager
def write_transaction(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A read-write transaction, committed on success; serialised per SQLite file."""
    lock = _sqlite_write_lock(engine)
    with lock or contextlib.nullcontext(), engine.begin() as connection:
        yield connection


@contextmanager
def read_transaction(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A read-only transaction (no write lock on SQLite)."""
    with engine.connect() as connection:
        connection.execution_options(read_only=True)
        with connection.begin():
            yield connection


class Statement:
    """One SQL statement with `:name` parameters, in the parameter style of each driver:
    sqlite3 takes `:name`, psycopg `%(name)s`. Run through a raw driver cursor, a statement
    costs about a tenth of the same statement through SQLAlchemy (9 µs against 100 µs for
    the admission UPDATE on SQLite), and both drivers cache its prepared form."""

    def __init__(self, sql: str) -> None:
        self.named = sql
        self.pyformat = re.sub(r"(?<!:):(\w+)", r"%(\1)s", sql)


Run = Callable[[Statement, Mapping[str, Any]], Any]
"""Executes a statement in the current transaction and returns the driver's cursor."""


class DatabaseBusy(Exception):
    """Another writer holds the SQLite file and the caller chose not to wait."""


@contextmanager
def _sqlite_begin(cursor: Any, wait: bool) -> Iterator[None]:
    if wait:
        cursor.execute("BEGIN IMMEDIATE")
        yield
        return
    (timeout_ms,) = cursor.execute("PRAGMA busy_timeout").fetchone()
    cursor.execute("PRAGMA busy_timeout = 0")
    try:
        cursor.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as error:
        raise DatabaseBusy(str(error)) from error
    finally:
        cursor.execute(f"PRAGMA busy_timeout = {int(timeout_ms)}")
    yield


@contextmanager
def raw_write_transaction(engine: sa.Engine, wait: bool = True) -> Iterator[Run]:
    """A read-write transaction on a pooled driver connection, bypassing SQLAlchemy's
    statement layer; committed on success, rolled back on error; serialised per SQLite file.
    With `wait=False` (SQLite only) it raises `DatabaseBusy` at once instead of waiting for
    another writer of the file, in this process or another."""
    lock = _sqlite_write_lock(engine)
    if lock is not None and not lock.acquire(blocking=wait):
        raise DatabaseBusy("another thread of this process is writing")
    try:
        pooled = engine.raw_connection()
        try:
            yield from _raw_transaction(pooled.driver_connection, lock is not None, wait)
        finally:
            pooled.close()
    finally:
        if lock is not None:
            lock.release()


def _raw_transaction(connection: Any, sqlite: bool, wait: bool) -> Iterator[Run]:
    cursor = connection.cursor()

    def run(statement: Statement, parameters: Mapping[str, Any]) -> Any:
        return cursor.execute(statement.named if sqlite else statement.pyformat, parameters)

    with _sqlite_begin(cursor, wait) if sqlite else contextlib.nullcontext():
        try:
            yield run
        except BaseException:
            if sqlite:  # autocommit mode: the transaction is the explicit BEGIN's
                cursor.execute("ROLLBACK")
            else:
                connection.rollback()
            raise
        if sqlite:
            cursor.execute("COMMIT")
        else:
            connection.commit()
