"""Group commit of the metering writes: the reservations, settlements and releases of
concurrent requests run one after another in shared transactions.

Each operation is a function of a `Run` (see `storage.raw_write_transaction`); `submit`
queues it and resolves once the transaction that ran it has committed. Where they run:

- SQLite: on the event loop itself, in one transaction per loop iteration, holding every
  operation submitted during that iteration. A local SQLite transaction of a few statements
  takes tens of microseconds, less than handing the work to a thread and back, which on
  busy cores costs a scheduler wake-up each way. The loop never waits for the database: if
  another writer holds the file (the CLI, another gateway process), the batch goes to the
  thread below instead.
- PostgreSQL (network round trips, row locks held by other replicas): on one thread;
  whatever is queued while a transaction runs goes into the next one, so under load one
  commit and one thread hand-off serve many requests.
 Operations keep their exact semantics: they run in sequence and see each
other's effects, and the database stays the only authority, so concurrent gateways sharing it
(several processes on one SQLite file, replicas on PostgreSQL) still never pass a limit
together. Within a batch the operations run in order of the key they touch, so that two
replicas' transactions lock key rows in the same order and cannot deadlock.

If a transaction fails, it rolls back whole and each of its operations is run again in a
transaction of its own, so that one bad operation fails alone.
"""

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa

from polydistill.serve.metering.storage import Run, raw_write_transaction

T = TypeVar("T")
Operation = Callable[[Run], Any]
_Item = tuple[int, Operation, asyncio.Future, asyncio.AbstractEventLoop]
_STOP = None


def _resolve(outcomes: list[tuple[asyncio.Future, bool, Any]]) -> None:
    for future, ok, value in outcomes:
        if future.cancelled():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class WriteBatcher:
    """Runs metering writes against `db` in shared transactions (at most `max_batch`
    operations each on the thread)."""

    def __init__(self, db: sa.Engine, max_batch: int = 256) -> None:
        self._db = db
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._guard = threading.Lock()
        self._on_loop = db.dialect.name == "sqlite"
        self._pending: list[_Item] = []

    def submit(self, operation: Callable[[Run], T], order: int) -> "asyncio.Future[T]":
        """Queue `operation`; the future holds its result once its transaction committed.
        `order` (the key id) sorts operations within a batch. The operation runs even if
        the future is cancelled."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        item = (order, operation, future, loop)
        if self._on_loop:
            if not self._pending:
                loop.call_soon(self._flush_on_loop)
            self._pending.append(item)
        else:
            self._to_thread([item])
        return future

    def _flush_on_loop(self) -> None:
        batch, self._pending = self._pending, []
        batch.sort(key=lambda item: item[0])
        try:
            with raw_write_transaction(self._db, wait=False) as run:
                outcomes = [(True, operation(run)) for _, operation, _, _ in batch]
        except Exception:  # busy, or an operation failed: rolled back; the thread retries
            self._to_thread(batch)
            return
        self._deliver(batch, outcomes)

    def _to_thread(self, batch: list[_Item]) -> None:
        self._start()
        for item in batch:
            self._queue.put(item)

    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._guard:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name="polydistill-metering", daemon=True
                )
                self._thread.start()

    def close(self) -> None:
        """Run what is queued, then stop the thread (blocking)."""
        with self._guard:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join()

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            stop = False
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            batch.sort(key=lambda item: item[0])
            self._deliver(batch, self._run(batch))
            if stop:
                return

    def _run(self, batch: list[_Item]) -> list[tuple[bool, Any]]:
        try:
            with raw_write_transaction(self._db) as run:
                return [(True, operation(run)) for _, operation, _, _ in batch]
        except Exception as error:
            if len(batch) == 1:
                return [(False, error)]
        return [self._run_alone(operation) for _, operation, _, _ in batch]

    def _run_alone(self, operation: Operation) -> tuple[bool, Any]:
        try:
            with raw_write_transaction(self._db) as run:
                return True, operation(run)
        except Exception as error:
            return False, error

    @staticmethod
    def _deliver(batch: list[_Item], outcomes: list[tuple[bool, Any]]) -> None:
        """Resolve the futures, each on its own loop (directly if that is the running one)."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, bool, Any]]] = {}
        for (_, _, future, loop), (ok, value) in zip(batch, outcomes, strict=True):
            by_loop.setdefault(loop, []).append((future, ok, value))
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for loop, outcomes_of_loop in by_loop.items():
            if loop is running:
                _resolve(outcomes_of_loop)
                continue
            # A closed loop raises RuntimeError: nobody waits for these any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, outcomes_of_loop)
