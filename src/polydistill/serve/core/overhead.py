"""The gateway's own time per request: the `x-polydistill-overhead-ms` response header.

The middleware starts an `EngineClock` for each request (in a context variable, which the
tasks a request starts share) and, when the response head is sent, writes

    overhead = time since the request reached the gateway − wall time spent in the engine

in milliseconds. Engine time is the wall time during which at least one of the request's
sequences was waiting inside the engine's `generate` (for `--upstream`, the upstream call: the
HTTP exchange and the wait for its tokens), so concurrent choices (`n` > 1) count once.

For a non-streamed response the head is sent after generation and settlement, so the header
covers everything the gateway does: reading the body, authentication, validation,
tokenization, admission, the engine's wrapper, the response body and the ledger row. A
streamed response's head goes out before the first engine call, so there the header is the
time to the head: reading, authentication, validation, tokenization and admission; what the
gateway spends between tokens and on settlement after `[DONE]` is not in it. Responses that
never reach the engine (errors, `/v1/models`) carry their whole time.

LiteLLM's `x-litellm-overhead-duration-ms` is defined the same way (total minus the upstream
call), which is what `benchmarks/gateway.py` compares.
"""

import time
from collections.abc import AsyncIterator
from contextvars import ContextVar

from polydistill.serve.engines.base import Engine, EngineEvent, SamplingParams

OVERHEAD_HEADER = "x-polydistill-overhead-ms"


class EngineClock:
    """Wall time during which at least one sequence of a request was inside the engine."""

    __slots__ = ("_active", "_since", "total_s")

    def __init__(self) -> None:
        self._active = 0
        self._since = 0.0
        self.total_s = 0.0

    def enter(self) -> None:
        if self._active == 0:
            self._since = time.perf_counter()
        self._active += 1

    def leave(self) -> None:
        self._active -= 1
        if self._active == 0:
            self.total_s += time.perf_counter() - self._since

    def engine_s(self) -> float:
        """Engine time so far, including a wait still in progress."""
        running = time.perf_counter() - self._since if self._active else 0.0
        return self.total_s + running


_clock: ContextVar[EngineClock | None] = ContextVar("polydistill_engine_clock", default=None)


def start_clock() -> EngineClock:
    """A fresh clock for the request running in this context."""
    clock = EngineClock()
    _clock.set(clock)
    return clock


def overhead_ms(started: float, clock: EngineClock) -> str:
    """The header's value: milliseconds since `started` (a perf_counter) minus engine time."""
    return f"{max((time.perf_counter() - started - clock.engine_s()) * 1000, 0.0):.3f}"


class TimedEngine:
    """`engine`, with the time spent waiting for each of its events put on the request's
    clock (when the request has one)."""

    def __init__(self, engine: Engine) -> None:
        self.inner = engine

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def generate(
        self, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[EngineEvent]:
        clock = _clock.get()
        events = self.inner.generate(prompt_ids, params)
        if clock is None:
            async for event in events:
                yield event
            return
        try:
            while True:
                clock.enter()
                try:
                    event = await anext(events)
                except StopAsyncIteration:
                    return
                finally:
                    clock.leave()
                yield event
        finally:
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()
