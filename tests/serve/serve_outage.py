"""A database the gateway's tests can take away and give back: a TCP proxy in front of
PostgreSQL whose connections are cut (and new ones refused) on demand, or, for SQLite, the
file's write lock held by another connection past the gateway's busy timeout."""

import contextlib
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import sqlalchemy as sa

TEST_PASSWORD = "pw-Secr3t-do-not-print"


class CuttableProxy:
    """Forwards loopback connections to `target`; `cut()` drops them all and turns new ones
    away until `restore()`."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = True
        self._sockets: set[socket.socket] = set()
        self._guard = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            if not self.open:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._guard:
                self._sockets |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.open = False
        with self._guard:
            cut, self._sockets = self._sockets, set()
        for end in cut:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def restore(self) -> None:
        self.open = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


@dataclass
class Outage:
    """`url` reaches the database through the fault; `cut()` and `restore()` toggle it."""

    url: str
    cut: Callable[[], None]
    restore: Callable[[], None]


@contextlib.contextmanager
def outage(db_url: str) -> Iterator[Outage]:
    """A way to make `db_url` unreachable. PostgreSQL URLs gain a password (the test
    server trusts loopback, so it is sent nowhere, but it is in every URL the gateway
    holds, for the tests that look for it in outputs)."""
    url = sa.engine.make_url(db_url)
    if url.get_backend_name() == "sqlite":
        held: list[sqlite3.Connection] = []

        def lock() -> None:
            other = sqlite3.connect(url.database, isolation_level=None, check_same_thread=False)
            other.execute("BEGIN IMMEDIATE")
            held.append(other)

        def unlock() -> None:
            while held:
                other = held.pop()
                other.execute("COMMIT")
                other.close()

        # One second of busy timeout: a write fails after that instead of after 60.
        yield Outage(f"{db_url}?timeout=1", lock, unlock)
        unlock()
        return
    proxy = CuttableProxy((url.host or "127.0.0.1", url.port or 5432))
    through = url.set(host="127.0.0.1", port=proxy.port, password=TEST_PASSWORD)
    try:
        yield Outage(through.render_as_string(hide_password=False), proxy.cut, proxy.restore)
    finally:
        proxy.close()
