"""A JSON client for an OpenAI-compatible teacher server: timeouts, bounded retries, bounded
concurrency.

    client = ServerClient("http://127.0.0.1:8000", api_key=None, who="teacher 'qwen'")
    models = client.get("/v1/models")

Connection errors, timeouts, 5xx and 429 are retried with exponential backoff (`backoff_s`,
doubling, honouring a short `Retry-After`); after `retries` further attempts the call raises a
`UserError` naming the URL. Any other answer that is not 200 is a `UserError` at once with the
server's own message: retrying a bad request cannot help. `attempt` is one try, raising
`Retryable` where another try may succeed: `server_pool.ServerPool` spreads requests over several
servers with it, each holding at most `concurrency` connections.
"""

import contextlib
import time
from typing import Any

import httpx

from polydistill.errors import UserError

RETRIED_STATUS = frozenset({429, 500, 502, 503, 504})
LONGEST_RETRY_AFTER_S = 30.0


class Retryable(Exception):
    """One try failed in a way another try may not (unreachable, 5xx, 429)."""

    def __init__(self, url: str, status: int | None, detail: str, retry_after: str | None) -> None:
        super().__init__(detail)
        self.url, self.status, self.detail, self.retry_after = url, status, detail, retry_after

    def final(self, who: str, where: str, attempts: int) -> UserError:
        """The one-line error once no try is left; `where` names the server(s) tried."""
        if self.status is None:
            return UserError(
                f"{who}: {where} unreachable after {attempts} attempts ({self.detail})"
            )
        return UserError(
            f"{who}: {where} still answered {self.status} after {attempts} attempts: {self.detail}"
        )

    def delay(self, backoff_s: float, strikes: int) -> float:
        """How long to leave the server alone: the backoff, or a short `Retry-After`."""
        delay = backoff_s * 2**strikes
        # A Retry-After given as an HTTP date is ignored: our own backoff stands.
        with contextlib.suppress(ValueError):
            delay = max(delay, min(float(self.retry_after or 0), LONGEST_RETRY_AFTER_S))
        return delay


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

    def attempt(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        """One try: the answer's JSON, `Retryable`, or a `UserError` for an answer no retry
        can mend."""
        url = f"{self.base_url}{path}"
        try:
            response = self._client.request(method, path, json=body)
        except httpx.TransportError as error:
            detail = f"{type(error).__name__}: {error or 'no detail'}"
            raise Retryable(url, None, detail, None) from None
        if response.status_code == 200:
            return response.json()
        if response.status_code in RETRIED_STATUS:
            retry_after = response.headers.get("retry-after")
            raise Retryable(url, response.status_code, _message(response), retry_after)
        raise UserError(
            f"{self.who}: server {url} answered {response.status_code}: {_message(response)}"
        )

    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        for attempt in range(self.retries + 1):
            try:
                return self.attempt(method, path, body)
            except Retryable as error:
                if attempt == self.retries:
                    raise error.final(self.who, f"server {error.url}", attempt + 1) from None
                time.sleep(error.delay(self.backoff_s, attempt))
        raise AssertionError("unreachable")


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
