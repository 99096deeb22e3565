"""Running the sequences of one request on an engine: all at once (collected) or merged into
one stream of (choice index, event) pairs.

A request has one sequence per prompt and choice (`n`); they run concurrently so that the
local engine can batch them. If any sequence fails, the others are cancelled.
"""

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from polydistill.serve.engines.base import (
    Engine,
    EngineError,
    EngineEvent,
    Finished,
    PromptLogprobs,
    SamplingParams,
    TextDelta,
    TokenLogprob,
)


@dataclass(frozen=True)
class Job:
    """One sequence: the choice index it fills, its prompt and its sampling parameters."""

    index: int
    prompt_ids: list[int]
    params: SamplingParams


@dataclass
class ChoiceOutput:
    """Everything one sequence produced."""

    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: tuple[TokenLogprob, ...] | None = None


def accumulate(output: ChoiceOutput, event: EngineEvent) -> None:
    """Fold one event into `output`; an engine-side cancellation is a failure here."""
    if isinstance(event, PromptLogprobs):
        output.prompt_logprobs = event.entries
    elif isinstance(event, TextDelta):
        output.text += event.text
        output.completion_tokens += event.tokens
        output.logprobs.extend(event.logprobs)
    elif isinstance(event, Finished):
        if event.reason == "cancelled":
            raise EngineError("the engine stopped the sequence (the server is shutting down)")
        output.finish_reason = event.reason
        output.completion_tokens = event.completion_tokens


async def _collect_one(engine: Engine, job: Job) -> ChoiceOutput:
    output = ChoiceOutput()
    async for event in engine.generate(job.prompt_ids, job.params):
        accumulate(output, event)
    if output.finish_reason is None:
        raise EngineError("the engine ended a sequence without finishing it")
    return output


async def collect(engine: Engine, jobs: list[Job], timeout_s: float) -> list[ChoiceOutput]:
    """Run every job to its end; outputs in job order. Raises TimeoutError or EngineError."""
    if len(jobs) == 1:  # the common case, without a task per job
        async with asyncio.timeout(timeout_s):
            return [await _collect_one(engine, jobs[0])]
    try:
        async with asyncio.timeout(timeout_s), asyncio.TaskGroup() as group:
            tasks = [group.create_task(_collect_one(engine, job)) for job in jobs]
    except* EngineError as failures:
        raise failures.exceptions[0] from None
    return [task.result() for task in tasks]


async def merged(
    engine: Engine, jobs: list[Job], deadline: float = math.inf
) -> AsyncIterator[tuple[int, EngineEvent]]:
    """Events of all jobs as they come, tagged with their choice index; TimeoutError if none
    comes before `deadline` (`time.monotonic()`, the event loop's clock). Closing the
    iterator cancels the sequences still running."""
    events: asyncio.Queue[tuple[int, EngineEvent] | BaseException | None] = asyncio.Queue()

    async def pump(job: Job) -> None:
        try:
            async for event in engine.generate(job.prompt_ids, job.params):
                await events.put((job.index, event))
        except Exception as error:  # handed to the consumer, which re-raises it
            await events.put(error)
        finally:
            await events.put(None)

    tasks = [asyncio.create_task(pump(job)) for job in jobs]
    running = len(tasks)
    try:
        while running:
            async with asyncio.timeout_at(deadline if deadline < math.inf else None):
                item = await events.get()  # the timeout never spans a yield
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
