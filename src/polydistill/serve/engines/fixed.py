"""An engine without a model: every sequence yields `max_tokens` copies of one token at once
(or `delay_s` apart).

It isolates the gateway's own cost (HTTP, validation, authentication, metering) in the
overhead benchmark, and gives metering tests an exact, known token count per request.
"""

import asyncio
from collections.abc import AsyncIterator

from polydistill.serve.engines.base import (
    EngineEvent,
    Finished,
    PromptLogprobs,
    SamplingParams,
    TextDelta,
    TokenLogprob,
)


class FixedEngine:
    """Generates `token` `max_tokens` times; logprobs are 0 (the token is certain)."""

    def __init__(self, token: str = " x", delay_s: float = 0.0) -> None:
        self.token = token
        self.delay_s = delay_s
        self.cancelled = 0

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def generate(
        self, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[EngineEvent]:
        certain = TokenLogprob(self.token, 0.0, ((self.token, 0.0),)[: params.logprobs or 0])
        if params.prompt_logprobs:
            first = TokenLogprob(self.token, None)
            yield PromptLogprobs((first,) + (certain,) * (len(prompt_ids) - 1))
        logprobs = (certain,) if params.logprobs is not None else ()
        produced = 0
        try:
            for _ in range(params.max_tokens):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                produced += 1
                yield TextDelta(self.token, 1, logprobs)
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise
        yield Finished("length", produced)
