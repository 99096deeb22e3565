"""A small stand-in for vLLM's OpenAI-compatible server, in a thread, for the served teacher's
failure paths: it answers the endpoints the teacher uses from a local model and tokenizer, and
can be told to fail the next completion requests with given statuses (5xx, 429), or to answer
slowly (`delay_s`).

    with fake_vllm(model, tokenizer, api_key="k") as server:
        server.failures += [503, 429]
        ...  # server.base_url, server.completion_calls

Prompt log-probs are computed as vLLM computes them (float32 log-softmax over the output layer,
top-k plus the actual token with its rank); generation is greedy only.
"""

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from vllm_server import free_port


@dataclass
class FakeServer:
    base_url: str
    failures: list[int] = field(default_factory=list)
    completion_calls: int = 0
    delay_s: float = 0.0  # each completion answers this much later: a slow server
    max_model_len: int | None = None  # the context `/v1/models` states, as vLLM does; None: none


def _prompt_logprobs(model, ids: list[int], k: int) -> list[dict[str, Any] | None]:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logprobs = logits.log_softmax(-1, dtype=torch.float32)
    k = logprobs.shape[-1] if k == -1 else k
    out: list[dict[str, Any] | None] = [None]
    for position in range(1, len(ids)):
        row = logprobs[position - 1]
        top = row.topk(k)
        entry = {
            str(i): {"logprob": float(v), "rank": r + 1, "decoded_token": ""}
            for r, (i, v) in enumerate(zip(top.indices.tolist(), top.values.tolist(), strict=True))
        }
        actual = ids[position]
        rank = int((row > row[actual]).sum()) + 1
        entry.setdefault(str(actual), {"logprob": float(row[actual]), "rank": rank})
        out.append(entry)
    return out


def _greedy(model, tokenizer, ids: list[int], max_tokens: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([ids]),
            max_new_tokens=max_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    return out[0, len(ids) :].tolist()


def _app(server: FakeServer, model, tokenizer, api_key: str | None, model_id: str) -> FastAPI:
    app = FastAPI()

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        if api_key and request.headers.get("authorization") != f"Bearer {api_key}":
            return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
        return await call_next(request)

    @app.get("/v1/models")
    def models() -> dict:
        entry = {"id": model_id, "root": "/models/fake", "object": "model"}
        if server.max_model_len is not None:
            entry["max_model_len"] = server.max_model_len
        return {"data": [entry]}

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict:
        body = await request.json()
        ids = tokenizer(body["prompt"], add_special_tokens=body.get("add_special_tokens", True))
        return {"tokens": ids["input_ids"], "count": len(ids["input_ids"])}

    @app.post("/v1/completions")
    async def completions(request: Request):
        server.completion_calls += 1
        await asyncio.sleep(server.delay_s)
        if server.failures:
            status = server.failures.pop(0)
            headers = {"Retry-After": "0"} if status == 429 else {}
            message = {"error": {"message": f"failing on purpose with {status}"}}
            return JSONResponse(message, status_code=status, headers=headers)
        body = await request.json()
        prompts = body["prompt"] if isinstance(body["prompt"][0], list) else [body["prompt"]]
        choices = []
        for index, ids in enumerate(prompts):
            choice: dict[str, Any] = {"index": index, "text": ""}
            if body.get("prompt_logprobs") is not None:
                choice["prompt_logprobs"] = _prompt_logprobs(model, ids, body["prompt_logprobs"])
            else:
                choice["token_ids"] = _greedy(model, tokenizer, ids, body["max_tokens"])
            choices.append(choice)
        return {"choices": choices}

    return app


@contextlib.contextmanager
def fake_vllm(
    model, tokenizer, api_key: str | None = None, model_id: str = "fake-model"
) -> Iterator[FakeServer]:
    """The fake on a free port, serving `model` as `model_id`."""
    port = free_port()
    server = FakeServer(f"http://127.0.0.1:{port}")
    app = _app(server, model, tokenizer, api_key, model_id)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error")
    runner = uvicorn.Server(config)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not runner.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the fake vLLM server did not start")
        time.sleep(0.02)
    try:
        yield server
    finally:
        runner.should_exit = True
        thread.join(timeout=10)
