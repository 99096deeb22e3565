"""Bearer-token authentication of API requests, with a short-lived cache of valid keys.

The cache maps the HMAC of a presented key to its record for `ttl_s` seconds (default 5),
saving a database round trip per request. Revocation still takes effect at once for
generation: admission re-checks it in the same statement that reserves the budget; only the
free routes (models, tokenizer) may accept a revoked or just-expired key for up to `ttl_s`.
Concurrent lookups of one key share a single database read: when a busy key's entry
expires, the requests in flight would otherwise all read it at once, each in a thread.
"""

import asyncio
import time

import sqlalchemy as sa
from anyio.to_thread import run_sync

from polydistill.serve.metering.accounts import KeyRecord, authenticate
from polydistill.serve.metering.keys import key_digest
from polydistill.serve.metering.timeutil import now_ms

_MAX_ENTRIES = 10_000


class KeyCache:
    """Authenticates presented keys against the database, remembering valid ones briefly."""

    def __init__(self, db: sa.Engine, server_secret: bytes, ttl_s: float) -> None:
        self._db = db
        self._secret = server_secret
        self._ttl_s = ttl_s
        self._valid: dict[str, tuple[KeyRecord, float]] = {}
        self._reading: dict[str, asyncio.Future[KeyRecord | None]] = {}

    async def lookup(self, presented: str) -> KeyRecord | None:
        digest = key_digest(self._secret, presented)
        cached = self._valid.get(digest)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        reading = self._reading.get(digest)
        if reading is None:
            reading = asyncio.ensure_future(self._read(presented, digest))
            self._reading[digest] = reading
            reading.add_done_callback(lambda _: self._reading.pop(digest, None))
        return await asyncio.shield(reading)

    async def _read(self, presented: str, digest: str) -> KeyRecord | None:
        record = await run_sync(authenticate, self._db, self._secret, presented, now_ms())
        if record is not None and self._ttl_s > 0:
            if len(self._valid) >= _MAX_ENTRIES:
                self._valid.clear()
            self._valid[digest] = (record, time.monotonic() + self._ttl_s)
        return record
