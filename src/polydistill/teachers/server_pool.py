"""Several servers of one teacher model behind one client: requests go to whichever server has a
free slot, and a failed try moves to another server.

    pool = ServerPool([ServerClient(url, ...) for url in urls], retries=5, backoff_s=0.5)
    answers = list(pool.map(lambda body: pool.post("/v1/completions", body), bodies))

Each server holds at most its client's `concurrency` requests; a request takes a slot on the
server with the most free slots (first listed on a tie), so a slow server, whose slots stay
taken, gets less of the work. A try that fails in a way another may not (`Retryable`: unreachable,
5xx, 429) goes again on a server this request has not yet failed on (any, once it has failed on
all), and the failing server is left alone for the backoff (`backoff_s` doubling with its
consecutive failures, or a short `Retry-After`): a killed server costs each of its requests one
try, then sits out while the others carry the work. After `retries` further tries the request
is a one-line `UserError` naming the server(s) tried. Any other failure stops the request at once.

Answers do not depend on which server gave them: every request is complete in itself (its own
seed, its own rows), so `map` returns the same results in input order for any number of servers.
"""

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from polydistill.errors import UserError
from polydistill.teachers.server_client import Retryable, ServerClient

Item = TypeVar("Item")
Result = TypeVar("Result")


class ServerPool:
    """Thread-safe; owns its clients (`close` closes them)."""

    def __init__(self, clients: Sequence[ServerClient], *, retries: int, backoff_s: float) -> None:
        if not clients:
            raise ValueError("a server pool needs at least one server")
        if retries < 0 or backoff_s < 0:
            raise UserError(
                f"{clients[0].who}: retries and backoff must be >= 0 (got {retries}, {backoff_s})"
            )
        self.clients, self.retries, self.backoff_s = list(clients), retries, backoff_s
        self.who = clients[0].who
        self._free = [client.concurrency for client in clients]
        self._strikes = [0] * len(clients)
        self._resting_until = [0.0] * len(clients)
        self._changed = threading.Condition()
        self.served = [0] * len(clients)  # answers each server gave: how the work was spread
        self.failed = [0] * len(clients)  # tries each server failed (retryable failures)

    @property
    def concurrency(self) -> int:
        return sum(client.concurrency for client in self.clients)

    @property
    def urls(self) -> list[str]:
        return [client.base_url for client in self.clients]

    def close(self) -> None:
        for client in self.clients:
            client.close()

    def get(self, path: str) -> Any:
        return self.request("GET", path, None)[1]

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, body)[1]

    def request(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[str, Any]:
        """(base URL of the server that answered, its JSON answer)."""
        failed_on: list[int] = []
        for attempt in range(self.retries + 1):
            server = self._take(failed_on)
            try:
                answer = self.clients[server].attempt(method, path, body)
            except Retryable as error:
                self._give(server, error)
                failed_on.append(server)
                if attempt == self.retries:
                    tried = list(dict.fromkeys(self.clients[i].base_url for i in failed_on))
                    where = (
                        f"server {error.url}"
                        if len(tried) == 1
                        else "servers " + ", ".join(f"{url}{path}" for url in tried)
                    )
                    raise error.final(self.who, where, attempt + 1) from None
                continue
            except BaseException:
                self._give(server, None, answered=False)
                raise
            self._give(server, None)
            return self.clients[server].base_url, answer
        raise AssertionError("unreachable")

    def map(self, call: Callable[[Item], Result], items: Iterable[Item]) -> Iterator[Result]:
        """`call` on every item in threads, as many as all servers' slots together, results in
        input order; the first failure propagates (requests in flight finish, none new start)."""
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="teacher-http") as pool:
            futures = [pool.submit(call, item) for item in items]
            try:
                for future in futures:
                    yield future.result()
            finally:
                for future in futures:
                    future.cancel()

    def _take(self, failed_on: list[int]) -> int:
        """A slot on a server this request has not failed on (any once it failed on all) and
        that is not resting after a failure, waiting for one as long as it takes."""
        candidates = [i for i in range(len(self.clients)) if i not in failed_on]
        candidates = candidates or list(range(len(self.clients)))
        with self._changed:
            while True:
                now = time.monotonic()
                ready = [i for i in candidates if self._free[i] and self._resting_until[i] <= now]
                if ready:
                    server = min(ready, key=lambda i: (-self._free[i], i))
                    self._free[server] -= 1
                    return server
                resting = [self._resting_until[i] - now for i in candidates if self._free[i]]
                self._changed.wait(timeout=max(min(resting), 0.0) if resting else None)

    def _give(self, server: int, failure: Retryable | None, answered: bool = True) -> None:
        with self._changed:
            self._free[server] += 1
            if failure is None:
                self._strikes[server] = 0
                self.served[server] += answered
            else:
                self.failed[server] += 1
                rest = failure.delay(self.backoff_s, self._strikes[server])
                self._strikes[server] += 1
                until = time.monotonic() + rest
                self._resting_until[server] = max(self._resting_until[server], until)
            self._changed.notify_all()
