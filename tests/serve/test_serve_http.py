"""The HTTP surface in process: OpenAI-shaped errors, caps, limits and their headers, the
closed surface, lineage, tokenizer routes, unbilled failures, and the upstream engine."""

import asyncio
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from serve_harness import SERVER_SECRET, client_for, make_gateway

from polydistill.serve.app import create_app
from polydistill.serve.core.metrics import admin_app
from polydistill.serve.engines.base import EngineError, EngineEvent, SamplingParams, TextDelta
from polydistill.serve.engines.fixed import FixedEngine
from polydistill.serve.engines.local import LocalEngine
from polydistill.serve.engines.upstream import UpstreamEngine
from polydistill.serve.metering import ledger
from polydistill.serve.metering.accounts import create_key, list_keys, revoke_key
from polydistill.serve.settings import Caps, GatewaySettings

NOW = 1_800_000_000_000


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run(gateway, calls):
    """Run `calls(client)` against the gateway; return its result."""

    async def go():
        async with client_for(gateway) as client:
            return await calls(client)

    return asyncio.run(go())


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_bad_input_is_a_shaped_4xx_and_never_billed(served, sqlite_url: str) -> None:
    settings = GatewaySettings(
        caps=Caps(max_tokens=50, max_n=2, max_logprobs=2), max_body_bytes=4096
    )
    gateway = make_gateway(served, FixedEngine(), sqlite_url, settings)
    key = create_key(gateway.db, SERVER_SECRET, "acme", NOW, models=[served.model_id])
    other = create_key(gateway.db, SERVER_SECRET, "other", NOW, models=["another-model"])
    model = served.model_id
    ok = {"model": model, "prompt": "hi"}
    cases = [
        (None, ok, 401, "invalid_api_key"),
        ("pd_0000_wrong", ok, 401, "invalid_api_key"),
        (other, ok, 403, "model_not_allowed"),
        (key, {**ok, "model": "nope"}, 404, "model_not_found"),
        (key, {**ok, "max_tokens": -1}, 400, "invalid_value"),
        (key, {**ok, "max_tokens": 51}, 400, "invalid_value"),
        (key, {**ok, "max_tokens": 10**12}, 400, "invalid_value"),
        (key, {**ok, "n": 3}, 400, "invalid_value"),
        (key, {**ok, "logprobs": 3}, 400, "invalid_value"),
        (key, {**ok, "logprobs": 6}, 400, "invalid_value"),
        (key, {**ok, "temperature": "hot"}, 400, "invalid_value"),
        (key, {**ok, "prompt": [[1, 2], [10**6]]}, 400, "invalid_value"),
        (key, {**ok, "prompt": [1] * 250, "max_tokens": 10}, 400, "context_length_exceeded"),
        (key, {"model": model, "messages": []}, 400, "invalid_value"),
        (key, {"model": model, "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
         400, "invalid_value"),
    ]  # fmt: skip

    async def calls(client: httpx.AsyncClient):
        results = []
        for key_used, body, *_ in cases:
            headers = _bearer(key_used) if key_used else {}
            path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
            results.append(await client.post(path, json=body, headers=headers))
        raw = [b"{not json", b'{"model": "\xff\xfe", "prompt": "x"}', b"[1, 2]", b"x" * 5000]
        for content in raw:
            results.append(
                await client.post("/v1/completions", content=content, headers=_bearer(key))
            )
        return results

    responses = _run(gateway, calls)
    for (_, body, status, code), response in zip(cases, responses, strict=False):
        assert response.status_code == status, (body, response.text)
        error = response.json()["error"]
        assert error["code"] == code and set(error) == {"message", "type", "param", "code"}
        assert response.headers["x-request-id"].startswith("req_")
    assert [r.status_code for r in responses[len(cases) :]] == [400, 400, 400, 413]
    assert ledger.usage_rows(gateway.db) == []


def test_rate_limits_headers_and_quota(served, sqlite_url: str) -> None:
    gateway = make_gateway(served, FixedEngine(), sqlite_url, GatewaySettings(rate_window_s=3600))
    limited = create_key(gateway.db, SERVER_SECRET, "limited", NOW, rpm=2, tpm=1000)
    broke = create_key(gateway.db, SERVER_SECRET, "broke", NOW, budget_micros=1)
    body = {"model": served.model_id, "prompt": "hello", "max_tokens": 4}

    async def calls(client: httpx.AsyncClient):
        limited_responses = [
            await client.post("/v1/completions", json=body, headers=_bearer(limited))
            for _ in range(3)
        ]
        return limited_responses, await client.post(
            "/v1/completions", json=body, headers=_bearer(broke)
        )

    (first, second, third), quota = _run(gateway, calls)
    revoke_key(gateway.db, "broke", NOW)
    # The key is still in the authentication cache, but admission sees the revocation.
    revoked = _run(
        gateway, lambda client: client.post("/v1/completions", json=body, headers=_bearer(broke))
    )
    assert revoked.status_code == 401 and revoked.json()["error"]["code"] == "invalid_api_key"
    assert first.status_code == second.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    assert int(first.headers["x-ratelimit-remaining-tokens"]) < 1000
    assert first.headers["x-ratelimit-reset-tokens"].endswith("s")
    assert third.status_code == 429
    assert third.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(third.headers["retry-after"]) >= 1 and int(third.headers["retry-after-ms"]) > 0
    assert quota.status_code == 429 and quota.json()["error"]["type"] == "insufficient_quota"
    assert quota.headers["x-should-retry"] == "false"
    assert len(ledger.usage_rows(gateway.db)) == 2


def test_closed_surface_models_lineage_and_tokenizer_routes(served, sqlite_url: str) -> None:
    lineage = {"teachers": ["g", "q"], "families": ["gemma", "qwen"], "shares": {}, "student": None}
    gateway = make_gateway(served, FixedEngine(), sqlite_url, lineage=lineage)
    key = create_key(gateway.db, SERVER_SECRET, "acme", NOW)

    async def calls(client: httpx.AsyncClient):
        get = lambda path: client.get(path, headers=_bearer(key))  # noqa: E731
        closed = [await get(p) for p in ("/metrics", "/config.json", "/model.safetensors", "/docs")]
        models = await get("/v1/models")
        tokens = await client.post("/tokenize", json={"prompt": "hello"}, headers=_bearer(key))
        text = await client.post(
            "/detokenize", json={"tokens": tokens.json()["tokens"]}, headers=_bearer(key)
        )
        chat = await client.post(
            "/tokenize",
            json={"messages": [{"role": "user", "content": "hi"}]},
            headers=_bearer(key),
        )
        return (
            closed,
            models,
            tokens,
            text,
            chat,
            await get("/tokenizer_info"),
            await client.get("/health"),
        )

    closed, models, tokens, text, chat, info, health = _run(gateway, calls)
    assert [r.status_code for r in closed] == [404, 404, 404, 404]
    card = models.json()["data"][0]
    assert card["id"] == served.model_id and card["lineage"]["families"] == ["gemma", "qwen"]
    assert tokens.json()["tokens"] == served.encode("hello")
    assert text.json()["prompt"] == "hello"
    assert chat.json()["tokens"] == served.chat_prompt([{"role": "user", "content": "hi"}])
    assert info.json()["eos_token"] == "<|im_end|>" and info.json()["chat_template"]
    assert health.json() == {"status": "ok"}

    async def scrape():
        transport = httpx.ASGITransport(app=admin_app(gateway.metrics, lambda: True))
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as admin:
            return await admin.get("/metrics")

    assert 'route="/v1/models",status="200"' in asyncio.run(scrape()).text


class FailingEngine:
    """Produces two tokens, then fails: the request must be a 5xx and cost nothing."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def generate(
        self, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[EngineEvent]:
        yield TextDelta(" a", 1)
        yield TextDelta(" b", 1)
        raise EngineError("the accelerator fell over")


def test_engine_failures_are_5xx_and_unbilled(served, sqlite_url: str) -> None:
    gateway = make_gateway(served, FailingEngine(), sqlite_url)
    key = create_key(gateway.db, SERVER_SECRET, "acme", NOW, budget_micros=10**6)
    body = {"model": served.model_id, "prompt": "hello", "max_tokens": 5}

    async def calls(client: httpx.AsyncClient):
        plain = await client.post("/v1/completions", json=body, headers=_bearer(key))
        streamed = await client.post(
            "/v1/completions", json={**body, "stream": True}, headers=_bearer(key)
        )
        return plain, streamed

    plain, streamed = _run(gateway, calls)
    assert plain.status_code == 503 and plain.json()["error"]["type"] == "server_error"
    assert '"engine_error"' in streamed.text and streamed.text.rstrip().endswith("data: [DONE]")
    assert ledger.usage_rows(gateway.db) == []
    [summary] = list_keys(gateway.db, NOW)
    assert summary.spent_micros == 0 and summary.reserved_micros == 0


def test_upstream_engine_reproduces_the_local_gateway(served, causal_lm, tmp_path) -> None:
    """A gateway fronting another gateway (as it would front vLLM) answers the same, with
    the same exact usage, for greedy requests, logprobs and echo included."""
    backend = make_gateway(served, LocalEngine(causal_lm, served), f"sqlite:///{tmp_path / 'a.db'}")
    backend_key = create_key(backend.db, SERVER_SECRET, "front", NOW)
    backend_app = create_app(backend)
    port = _free_port()
    upstream = UpstreamEngine(f"http://127.0.0.1:{port}", served.model_id, backend_key)
    front = make_gateway(served, upstream, f"sqlite:///{tmp_path / 'b.db'}")
    key = create_key(front.db, SERVER_SECRET, "client", NOW)
    requests = [
        ("/v1/completions", {"prompt": "The quick brown", "max_tokens": 6, "temperature": 0,
                             "logprobs": 2, "echo": True}),
        ("/v1/completions", {"prompt": [[5, 6, 7]], "max_tokens": 4, "temperature": 0,
                             "stop": ["e"]}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                  "max_tokens": 5, "temperature": 0}),
    ]  # fmt: skip

    async def go():
        config = uvicorn.Config(backend_app, host="127.0.0.1", port=port, log_level="warning")
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        try:
            direct_client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60)
            async with direct_client as direct, client_for(front) as fronted:
                pairs = []
                for path, body in requests:
                    body = {"model": served.model_id, **body}
                    a = await direct.post(path, json=body, headers=_bearer(backend_key))
                    b = await fronted.post(path, json=body, headers=_bearer(key))
                    pairs.append((a.json(), b.json()))
                return pairs
        finally:
            server.should_exit = True
            await serving

    for direct, fronted in asyncio.run(go()):
        assert fronted["usage"] == direct["usage"]
        for a, b in zip(direct["choices"], fronted["choices"], strict=True):
            assert b.get("text", b.get("message")) == a.get("text", a.get("message"))
            assert b["finish_reason"] == a["finish_reason"]
            if a.get("logprobs"):
                assert b["logprobs"]["tokens"] == a["logprobs"]["tokens"]
                # Batches of different shapes round differently in float32.
                assert b["logprobs"]["token_logprobs"] == pytest.approx(
                    a["logprobs"]["token_logprobs"], abs=1e-4
                )
    assert len(ledger.usage_rows(front.db)) == 3


def test_an_unreachable_upstream_is_a_503_and_never_billed(served, sqlite_url: str) -> None:
    upstream = UpstreamEngine(f"http://127.0.0.1:{_free_port()}", served.model_id)
    gateway = make_gateway(served, upstream, sqlite_url)
    key = create_key(gateway.db, SERVER_SECRET, "acme", NOW)
    body = {"model": served.model_id, "prompt": "hello", "max_tokens": 3}

    async def calls(client):  # type: ignore[no-untyped-def]
        return await client.post("/v1/completions", json=body, headers=_bearer(key))

    response = _run(gateway, calls)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "engine_error"
    assert ledger.usage_rows(gateway.db) == []
