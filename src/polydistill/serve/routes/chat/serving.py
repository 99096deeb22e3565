"""`POST /v1/chat/completions`: messages through the model's own chat template to a metered
request, and the chat response and `chat.completion.chunk` stream format (logprobs as
`content` lists with `top_logprobs`).
"""

import time
from typing import Any

from polydistill.serve.core.api_errors import bad_request
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
    SamplingParams,
    TextDelta,
    TokenLogprob,
)
from polydistill.serve.engines.generation import ChoiceOutput, Job
from polydistill.serve.metering.accounts import KeyRecord
from polydistill.serve.routes.chat.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatMessage,
    ChatTokenLogprob,
    TopLogprob,
)


def chat_prompt_ids(served: ServedModel, messages: list[ChatMessage]) -> list[int]:
    """The token ids of `messages` under the model's chat template."""
    plain = [{"role": m.role, "content": m.text()} for m in messages]
    try:
        return served.chat_prompt(plain)
    except Exception as error:  # templates raise their own errors for conversations they reject
        raise bad_request(f"the chat template rejected the messages: {error}", "messages") from None


def chat_request(
    body: ChatCompletionRequest,
    key: KeyRecord,
    served: ServedModel,
    caps: EffectiveCaps,
    idempotency_key: str | None,
) -> tuple[GenerationRequest, "ChatShape"]:
    """Validate `body` against the key's caps and the model; build its jobs and shape."""
    check_at_most(body.n, caps.max_n, "n")
    check_at_most(body.top_logprobs, caps.max_top_logprobs, "top_logprobs")
    prompt_ids = chat_prompt_ids(served, body.messages)
    check_token_ids(prompt_ids, served.vocab_size, "messages")
    param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    requested = body.max_completion_tokens or body.max_tokens
    max_tokens = completion_budget(
        requested, len(prompt_ids), served.context_length, caps.max_tokens, param
    )
    stop = () if body.stop is None else (body.stop,) if isinstance(body.stop, str) else body.stop
    jobs = [
        Job(
            choice,
            prompt_ids,
            SamplingParams(
                max_tokens=max_tokens,
                temperature=body.temperature,
                top_p=body.top_p,
                seed=None if body.seed is None else body.seed + choice,
                stop=tuple(stop),
                logprobs=(body.top_logprobs or 0) if body.logprobs else None,
            ),
        )
        for choice in range(body.n)
    ]
    request = GenerationRequest(
        key=key,
        endpoint="chat.completions",
        jobs=jobs,
        prompt_tokens=len(prompt_ids),
        stream=body.stream,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
        idempotency_key=idempotency_key,
    )
    return request, ChatShape(body.model, body.n, body.logprobs)


def _token_bytes(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def _chat_logprobs(entries: list[TokenLogprob]) -> ChatLogprobs:
    content = [
        ChatTokenLogprob(
            token=e.token,
            logprob=e.logprob if e.logprob is not None else 0.0,
            bytes=_token_bytes(e.token),
            top_logprobs=[
                TopLogprob(token=t, logprob=lp, bytes=_token_bytes(t)) for t, lp in e.top
            ],
        )
        for e in entries
    ]
    return ChatLogprobs(content=content)


class ChatShape:
    """Writes chat responses and chunks for one request."""

    def __init__(self, model: str, n: int, logprobs: bool) -> None:
        self.id = f"chatcmpl-{time.time_ns():x}"
        self.created = int(time.time())
        self.model = model
        self.n = n
        self.logprobs = logprobs

    def response(self, outputs: list[ChoiceOutput], usage: Usage) -> ChatCompletionResponse:
        choices = [
            ChatChoice(
                index=index,
                message=AssistantMessage(content=output.text),
                logprobs=_chat_logprobs(output.logprobs) if self.logprobs else None,
                finish_reason=output.finish_reason,  # type: ignore[arg-type]
            )
            for index, output in enumerate(outputs)
        ]
        return ChatCompletionResponse(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=usage
        )

    def _chunk(
        self, index: int, delta: dict, logprobs: Any = None, finish: str | None = None
    ) -> dict:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }

    def opening_chunks(self) -> list[dict[str, Any]]:
        return [self._chunk(i, {"role": "assistant", "content": ""}) for i in range(self.n)]

    def event_chunk(self, index: int, event: EngineEvent) -> dict[str, Any] | None:
        if isinstance(event, TextDelta):
            if not event.text and not (self.logprobs and event.logprobs):
                return None
            logprobs = None
            if self.logprobs:
                logprobs = _chat_logprobs(list(event.logprobs)).model_dump()
            return self._chunk(index, {"content": event.text}, logprobs)
        if isinstance(event, Finished):
            return self._chunk(index, {}, None, event.reason)
        return None

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage.model_dump(),
        }
