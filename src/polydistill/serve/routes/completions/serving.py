"""`POST /v1/completions`: prompts (text or token ids, one or a batch) to a metered request,
and the legacy completions response and stream format (`logprobs` with tokens, token_logprobs,
top_logprobs and text_offset; `echo` prepends the prompt and its logprobs).
"""

import time
from typing import Any

from polydistill.serve.core.limits import (
    EffectiveCaps,
    check_at_most,
    check_token_ids,
    completion_budget,
)
from polydistill.serve.core.request_flow import GenerationRequest
from polydistill.serve.core.served_model import ServedModel
from polydistill.serve.core.wire import Usage
from polydistill.serve.engines.base import (
    EngineEvent,
    Finished,
    PromptLogprobs,
    SamplingParams,
    TextDelta,
    TokenLogprob,
)
from polydistill.serve.engines.generation import ChoiceOutput, Job
from polydistill.serve.metering.accounts import KeyRecord
from polydistill.serve.routes.completions.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
)


def _prompts(body: CompletionRequest, served: ServedModel) -> list[list[int]]:
    prompt = body.prompt
    if isinstance(prompt, str):
        return [served.encode(prompt)]
    if all(isinstance(item, str) for item in prompt):
        return [served.encode(item) for item in prompt]  # type: ignore[arg-type]
    if all(isinstance(item, int) for item in prompt):
        return [list(prompt)]  # type: ignore[arg-type]
    return [list(item) for item in prompt]  # type: ignore[union-attr]


def _stop(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


def completion_request(
    body: CompletionRequest,
    key: KeyRecord,
    served: ServedModel,
    caps: EffectiveCaps,
    idempotency_key: str | None,
) -> tuple[GenerationRequest, "CompletionShape"]:
    """Validate `body` against the key's caps and the model; build its jobs and shape."""
    check_at_most(body.n, caps.max_n, "n")
    check_at_most(body.logprobs, caps.max_logprobs, "logprobs")
    prompts = _prompts(body, served)
    jobs = []
    for prompt_index, prompt_ids in enumerate(prompts):
        check_token_ids(prompt_ids, served.vocab_size, "prompt")
        max_tokens = completion_budget(
            body.max_tokens, len(prompt_ids), served.context_length, caps.max_tokens, "max_tokens"
        )
        for choice in range(body.n):
            params = SamplingParams(
                max_tokens=max_tokens,
                temperature=body.temperature,
                top_p=body.top_p,
                seed=None if body.seed is None else body.seed + choice,
                stop=_stop(body.stop),
                logprobs=body.logprobs,
                prompt_logprobs=body.echo and body.logprobs is not None,
            )
            jobs.append(Job(prompt_index * body.n + choice, prompt_ids, params))
    request = GenerationRequest(
        key=key,
        endpoint="completions",
        jobs=jobs,
        prompt_tokens=sum(len(p) for p in prompts),
        stream=body.stream,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
        idempotency_key=idempotency_key,
    )
    echoes = [served.decode(p) for p in prompts] if body.echo else None
    shape = CompletionShape(body.model, body.n, echoes, body.logprobs is not None)
    return request, shape


def _logprobs(entries: list[TokenLogprob], start_offset: int) -> CompletionLogprobs:
    offsets, offset = [], start_offset
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.token)
    return CompletionLogprobs(
        tokens=[e.token for e in entries],
        token_logprobs=[e.logprob for e in entries],
        top_logprobs=[dict(e.top) if e.logprob is not None else None for e in entries],
        text_offset=offsets,
    )


class CompletionShape:
    """Writes completions responses and chunks for one request."""

    def __init__(self, model: str, n: int, echoes: list[str] | None, logprobs: bool) -> None:
        self.id = f"cmpl-{time.time_ns():x}"
        self.created = int(time.time())
        self.model = model
        self.n = n
        self.echoes = echoes
        self.logprobs = logprobs
        self._offsets: dict[int, int] = {}

    def _echo(self, index: int) -> str:
        return self.echoes[index // self.n] if self.echoes is not None else ""

    def response(self, outputs: list[ChoiceOutput], usage: Usage) -> CompletionResponse:
        choices = []
        for index, output in enumerate(outputs):
            logprobs = None
            if self.logprobs:
                entries = list(output.prompt_logprobs or ()) + output.logprobs
                logprobs = _logprobs(entries, 0)
            choices.append(
                CompletionChoice(
                    index=index,
                    text=self._echo(index) + output.text,
                    logprobs=logprobs,
                    finish_reason=output.finish_reason,  # type: ignore[arg-type]
                )
            )
        return CompletionResponse(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=usage
        )

    def _chunk(
        self, index: int, text: str, logprobs: Any = None, finish: str | None = None
    ) -> dict:
        choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }

    def opening_chunks(self) -> list[dict[str, Any]]:
        if self.echoes is None or self.logprobs:
            return []  # echoed together with the prompt logprobs, when those come
        return [self._chunk(i, self._echo(i)) for i in range(len(self.echoes) * self.n)]

    def _logprob_chunk(self, index: int, entries: list[TokenLogprob]) -> dict[str, Any]:
        start = self._offsets.get(index, 0)
        logprobs = _logprobs(entries, start)
        self._offsets[index] = start + sum(len(e.token) for e in entries)
        return logprobs.model_dump()

    def event_chunk(self, index: int, event: EngineEvent) -> dict[str, Any] | None:
        if isinstance(event, PromptLogprobs):
            logprobs = self._logprob_chunk(index, list(event.entries))
            return self._chunk(index, self._echo(index), logprobs)
        if isinstance(event, TextDelta):
            if not event.text and not (self.logprobs and event.logprobs):
                return None
            logprobs = self._logprob_chunk(index, list(event.logprobs)) if self.logprobs else None
            return self._chunk(index, event.text, logprobs)
        if isinstance(event, Finished):
            return self._chunk(index, "", None, event.reason)
        return None

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage.model_dump(),
        }
