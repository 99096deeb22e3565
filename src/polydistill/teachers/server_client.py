"""A JSON client for an OpenAI-compatible teacher server: timeouts, bounded retries, bounded
concurrency.

    client = ServerClient("http://127.0.0.1:8000", api_key=None, who="teacher 'qwen'")
    models = client.get("/v1/models")
    answers = client.map(lambda body: client.post("/v1/completions", body), bodies)

Connection errors, timeouts, 5xx and 429 are retried with exponential backoff (`backoff_s`,
doubling, honouring a short `Retry-After`); after `retries` further attempts the call raises a
`UserError` naming the URL. Any other answer that is not 200 is a `UserError` at once with the
server's own message: retrying a bad request cannot help. `map` runs at most `concurrency`
requests at a time in threads (the server batches concurrent requests itself) and returns
results in input order.
"""

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx

from polydistill.errors import UserError

Item = TypeVar("Item")
Result = TypeVar("Result")

RETRIED_STATUS = frozenset({429, 500, 502, 503, 504})
LONGEST_RETRY_AFTER_S = 30.0


class ServerClient:
    """Thread-safe: one pooled `httpx.Client` shared by the worker threads."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        who: str,
        timeout_s: float = 300.0,
        retries: int = 5,
        backoff_s: float = 0.5,
        concurrency: int = 4,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if retries < 0 or backoff_s < 0 or concurrency < 1:
            raise UserError(
                f"{who}: retries and backoff must be >= 0 and concurrency >= 1 "
                f"(got {retries}, {backoff_s}, {concurrency})"
            )
        self.base_url = base_url.rstrip("/")
        self.who, self.retries, self.backoff_s = who, retries, backoff_s
        self.concurrency = concurrency
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            limits=httpx.Limits(max_connections=concurrency),
            transport=transport,
        )

    def close(self) -> None:
        self._client.close()

    def get(self, path: str) -> Any:
        return self._request("GET", path, None)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._request("POST", path, body)

    def map(self, call: Callable[[Item], Result], items: Iterable[Item]) -> Iterator[Result]:
        """`call` on every item, at most `concurrency` at once, results in input order; the
        first failure propagates (requests still in flight finish first, none new start)."""
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="teacher-http") as pool:
            futures = [pool.submit(call, item) for item in items]
            try:
                for future in futures:
                    yield future.result()
            finally:
                for future in futures:
                    future.cancel()

    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        url = f"{self.base_url}{path}"
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._client.request(method, path, json=body)
            except httpx.TransportError as error:
                if last:
                    raise UserError(
                        f"{self.who}: server {url} unreachable after {attempt + 1} attempts "
                        f"({type(error).__name__}: {error or 'no detail'})"
                    ) from None
                self._sleep(attempt, None)
                continue
            if response.status_code == 200:
                return response.json()
            if response.status_code not in RETRIED_STATUS:
                raise UserError(
                    f"{self.who}: server {url} answered {response.status_code}: "
                    f"{_message(response)}"
                )
            if last:
                raise UserError(
                    f"{self.who}: server {url} still answered {response.status_code} after "
                    f"{attempt + 1} attempts: {_message(response)}"
                )
            self._sleep(attempt, response.headers.get("retry-after"))
        raise AssertionError("unreachable")

    def _sleep(self, attempt: int, retry_after: str | None) -> None:
        delay = self.backoff_s * 2**attempt
        # A Retry-After given as an HTTP date is ignored: our own backoff stands.
        with contextlib.suppress(ValueError):
            delay = max(delay, min(float(retry_after or 0), LONGEST_RETRY_AFTER_S))
        time.sleep(delay)


def _message(response: httpx.Response) -> str:
    """The server's error message (OpenAI-style `{"error": {"message"}}`, FastAPI `detail`),
    else the start of the body."""
    try:
        payload = response.json()
    except ValueError:
        return response.text[:300] or "(empty body)"
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])[:300]
        if "message" in payload or "detail" in payload:
            return str(payload.get("message") or payload.get("detail"))[:300]
    return str(payload)[:300]
