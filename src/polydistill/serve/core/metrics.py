"""Prometheus metrics of the gateway, served only by the admin app on its own port.

The API port never exposes `/metrics`: request counts, latencies and token totals describe
the business and stay on the operator's network.
"""

from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


class GatewayMetrics:
    """The gateway's counters in a registry of their own (one per app, so tests can run
    several gateways in a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "polydistill_requests",
            "HTTP requests answered",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "polydistill_request_seconds",
            "Time to the end of the response",
            ["route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.in_flight = Gauge(
            "polydistill_requests_in_flight", "Requests being answered", registry=self.registry
        )
        self.tokens = Counter(
            "polydistill_tokens", "Billed tokens", ["kind"], registry=self.registry
        )
        self.spend = Counter(
            "polydistill_billed_micros", "Billed money in micro-dollars", registry=self.registry
        )

        # Labelled children, looked up once: `labels()` costs more than the update itself.
        self._prompt_tokens = self.tokens.labels("prompt")
        self._completion_tokens = self.tokens.labels("completion")
        self._by_route: dict[tuple[str, int], tuple[Any, Any]] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        children = self._by_route.get((route, status))
        if children is None:
            children = (self.requests.labels(route, str(status)), self.latency.labels(route))
            self._by_route[(route, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def record_usage(self, prompt_tokens: int, completion_tokens: int, cost_micros: int) -> None:
        self._prompt_tokens.inc(prompt_tokens)
        self._completion_tokens.inc(completion_tokens)
        self.spend.inc(cost_micros)


def admin_app(metrics: GatewayMetrics, healthy: Callable[[], bool]) -> Starlette:
    """`/metrics` (Prometheus text format) and `/health`, for the admin port only."""

    async def serve_metrics(_: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def health(_: Request) -> JSONResponse:
        ok = healthy()
        return JSONResponse({"status": "ok" if ok else "starting"}, status_code=200 if ok else 503)

    return Starlette(routes=[Route("/metrics", serve_metrics), Route("/health", health)])
