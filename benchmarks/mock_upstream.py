"""An instant OpenAI-compatible upstream for gateway benchmarks: every completion is
`MAX_TOKENS` copies of one token, answered at once, streamed or not.

    python -m benchmarks.mock_upstream --port 9000

A bare ASGI app under uvicorn (uvloop, httptools), so that the upstream's own cost stays
small beside the gateways in front of it. It answers `POST /v1/completions` and
`POST /v1/chat/completions` (JSON, or server-sent events with a usage chunk when `stream`
is true; `stream_options` is honoured only in that it always sends usage), and `GET
/v1/models`. It counts the requests it answered: `GET /count`.
"""

import argparse
import json
from collections.abc import Awaitable, Callable
from typing import Any

MAX_TOKENS = 16
TOKEN = " x"
PROMPT_TOKENS = 2  # reported when the prompt is text; token-id prompts report their length

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    total = prompt_tokens + completion_tokens
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": total,
    }


def _prompt_tokens(request: dict[str, Any]) -> int:
    prompt = request.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        return len(prompt)
    return PROMPT_TOKENS


def _choice(chat: bool, text: str, finish: str | None, delta: bool) -> dict[str, Any]:
    if not chat:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    message = {"role": "assistant", "content": text} if text or not delta else {}
    return {"index": 0, ("delta" if delta else "message"): message, "finish_reason": finish}


def completion_body(request: dict[str, Any], chat: bool) -> bytes:
    tokens = min(int(request.get("max_tokens") or MAX_TOKENS), MAX_TOKENS)
    body = {
        "id": "cmpl-mock",
        "object": "chat.completion" if chat else "text_completion",
        "created": 0,
        "model": request.get("model", "mock"),
        "choices": [_choice(chat, TOKEN * tokens, "length", delta=False)],
        "usage": _usage(_prompt_tokens(request), tokens),
    }
    return json.dumps(body, separators=(",", ":")).encode()


def stream_body(request: dict[str, Any], chat: bool) -> bytes:
    tokens = min(int(request.get("max_tokens") or MAX_TOKENS), MAX_TOKENS)
    head = {
        "id": "cmpl-mock",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": 0,
        "model": request.get("model", "mock"),
    }
    chunks = [{**head, "choices": [_choice(chat, TOKEN, None, delta=True)]}] * tokens
    chunks.append({**head, "choices": [_choice(chat, "", "length", delta=True)]})
    chunks.append({**head, "choices": [], "usage": _usage(_prompt_tokens(request), tokens)})
    lines = [f"data: {json.dumps(c, separators=(',', ':'))}\n\n" for c in chunks]
    return ("".join(lines) + "data: [DONE]\n\n").encode()


class MockUpstream:
    """The ASGI app."""

    def __init__(self) -> None:
        self.answered = 0

    async def _respond(self, send: Send, status: int, body: bytes, content_type: bytes) -> None:
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        path = scope["path"]
        if path == "/count":
            await self._respond(send, 200, str(self.answered).encode(), b"text/plain")
            return
        if path == "/v1/models":
            models = {"object": "list", "data": [{"id": "mock", "object": "model"}]}
            await self._respond(send, 200, json.dumps(models).encode(), b"application/json")
            return
        if path not in ("/v1/completions", "/v1/chat/completions"):
            await self._respond(
                send, 404, b'{"error":{"message":"not found"}}', b"application/json"
            )
            return
        request = json.loads(b"".join(chunks) or b"{}")
        chat = path == "/v1/chat/completions"
        self.answered += 1
        if request.get("stream"):
            await self._respond(send, 200, stream_body(request, chat), b"text/event-stream")
        else:
            await self._respond(send, 200, completion_body(request, chat), b"application/json")


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvicorn.run(
        MockUpstream(), host=args.host, port=args.port, log_level="warning", access_log=False
    )


if __name__ == "__main__":
    main()
