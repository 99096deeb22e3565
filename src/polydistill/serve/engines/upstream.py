"""An engine that fronts a vLLM-compatible server (`polydistill serve --upstream URL`).

The gateway keeps authentication, caps, templating and metering; the upstream only completes
token-id prompts on `/v1/completions`, streamed with `stream_options.include_usage` so that the
completion token count is the upstream model's own. Prompt logprobs (`echo` with `logprobs`)
come from one extra scoring call with `echo: true`. The upstream should sit on a private
address: it is trusted and usually unauthenticated (`api_key` is sent when given).

The HTTP client is aiohttp: a streamed upstream call costs about 0.27 ms of client CPU there
against 1.1 ms through httpx (measured against an instant upstream), and that CPU is spent
on the gateway's event loop for every request.
"""

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from polydistill.serve.engines.base import (
    EngineError,
    EngineEvent,
    Finished,
    PromptLogprobs,
    SamplingParams,
    TextDelta,
    TokenLogprob,
)


def _entries(logprobs: dict[str, Any] | None) -> list[TokenLogprob]:
    if not logprobs:
        return []
    tops = logprobs.get("top_logprobs") or [None] * len(logprobs["tokens"])
    entries = []
    for token, logprob, top in zip(
        logprobs["tokens"], logprobs["token_logprobs"], tops, strict=True
    ):
        ranked = sorted((top or {}).items(), key=lambda item: -item[1])
        entries.append(TokenLogprob(token, logprob, tuple(ranked)))
    return entries


class UpstreamEngine:
    """Streams completions from `base_url` (e.g. http://10.0.0.5:8000) for `model`."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 600.0,
        max_connections: int = 256,
    ) -> None:
        self._url = base_url.rstrip("/") + "/v1/completions"
        self._model = model
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout_s = timeout_s
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            connector=aiohttp.TCPConnector(limit=self._max_connections),
            read_bufsize=2**20,  # one SSE line (a chunk with top logprobs) fits
            raise_for_status=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _payload(self, prompt_ids: list[int], params: SamplingParams) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self._model,
            "prompt": prompt_ids,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.seed is not None:
            payload["seed"] = params.seed
        if params.stop:
            payload["stop"] = list(params.stop)
        if params.logprobs is not None:
            payload["logprobs"] = params.logprobs
        return payload

    async def _prompt_logprobs(
        self, prompt_ids: list[int], params: SamplingParams
    ) -> PromptLogprobs:
        assert self._session is not None
        payload = {**self._payload(prompt_ids, params), "max_tokens": 1, "echo": True}
        payload["logprobs"] = params.logprobs or 0
        async with self._session.post(self._url, json=payload) as response:
            if response.status != 200:
                raise EngineError(f"upstream answered {response.status} to a scoring call")
            body = json.loads(await response.read())
        entries = _entries(body["choices"][0].get("logprobs"))
        return PromptLogprobs(tuple(entries[: len(prompt_ids)]))

    async def generate(
        self, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[EngineEvent]:
        if self._session is None:
            raise EngineError("the upstream engine is not started")
        try:
            if params.prompt_logprobs:
                yield await self._prompt_logprobs(prompt_ids, params)
            if params.max_tokens == 0:
                yield Finished("length", 0)
                return
            async for event in self._stream(prompt_ids, params):
                yield event
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as error:
            raise EngineError(f"upstream failed: {type(error).__name__}: {error}") from None

    async def _stream(
        self, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[EngineEvent]:
        assert self._session is not None
        payload = {
            **self._payload(prompt_ids, params),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        produced, reported, finish = 0, None, "length"
        async with self._session.post(self._url, json=payload) as response:
            if response.status != 200:
                body = (await response.read())[:300].decode("utf-8", "replace")
                raise EngineError(f"upstream answered {response.status}: {body}")
            async for raw in response.content:
                line = raw.rstrip(b"\r\n")
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                chunk = json.loads(line[len(b"data: ") :])
                if "error" in chunk:
                    raise EngineError(f"upstream error: {chunk['error'].get('message')}")
                if chunk.get("usage"):
                    reported = int(chunk["usage"]["completion_tokens"])
                for choice in chunk.get("choices", []):
                    entries = _entries(choice.get("logprobs"))
                    text = choice.get("text") or ""
                    # Without logprobs a chunk's token count is unknown: count one; the
                    # usage chunk at the end gives the exact total.
                    tokens = len(entries) or (1 if text else 0)
                    produced += tokens
                    if text or entries:
                        yield TextDelta(text, tokens, tuple(entries))
                    finish = choice.get("finish_reason") or finish
        if finish not in ("stop", "length"):
            finish = "stop"
        yield Finished(finish, reported if reported is not None else produced)  # type: ignore[arg-type]
