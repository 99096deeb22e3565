"""Schemathesis fuzzes every operation of the gateway's OpenAPI document (bounded examples,
derandomized): whatever it sends, the answer is an OpenAI-shaped error or a success, never a
5xx, and nothing but successful generations is billed."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from serve_harness import SERVER_SECRET, make_gateway

from polydistill.serve.app import create_app
from polydistill.serve.engines.fixed import FixedEngine
from polydistill.serve.metering import ledger
from polydistill.serve.metering.accounts import create_key

EXAMPLES_PER_OPERATION = 30


def _fuzz(operation, key: str, model: str, billed: list[str]) -> None:
    @given(operation.as_strategy())
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def check(case) -> None:
        # Most cases authenticate and name the served model, so that fuzzing reaches past
        # the key and model checks into validation, metering and generation.
        headers = dict(case.headers or {})
        salt = sum(map(ord, repr(case.body)))
        if salt % 4:
            headers["Authorization"] = f"Bearer {key}"
        if salt % 3 and isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = model
        response = case.call(headers=headers)
        where = f"{case.method} {case.formatted_path} {case.body!r}"
        assert response.status_code < 500, f"{where}: {response.status_code} {response.text}"
        if response.status_code >= 400:
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}, where
        elif case.path in ("/v1/completions", "/v1/chat/completions"):
            request_id = response.headers["x-request-id"]
            billed.append(request_id[0] if isinstance(request_id, list) else request_id)

    check()


@pytest.mark.slow
def test_no_input_gets_a_server_error(served, tmp_path) -> None:
    gateway = make_gateway(served, FixedEngine(), f"sqlite:///{tmp_path / 'gateway.db'}")
    key = create_key(gateway.db, SERVER_SECRET, "fuzzer", 0)
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(gateway))
    paths = set()
    billed: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        paths.add(operation.path)
        _fuzz(operation, key, served.model_id, billed)
    assert paths == {
        "/health", "/v1/models", "/v1/models/{model_id}", "/v1/models/{model_id}/notices",
        "/tokenize", "/detokenize",
        "/tokenizer_info", "/v1/completions", "/v1/chat/completions",
    }  # fmt: skip
    assert len(billed) >= 5
    # Replays of a repeated Idempotency-Key answer 200 with the first request's id, unbilled.
    assert sorted(r["request_id"] for r in ledger.usage_rows(gateway.db)) == sorted(set(billed))
