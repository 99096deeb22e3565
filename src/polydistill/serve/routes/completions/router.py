"""`POST /v1/completions`. Well-formed requests are usually answered by `fast_path`, which
calls the same `generation_response`; this route answers the rest and documents the API."""

from fastapi import APIRouter, Request
from fastapi.responses import Response

from polydistill.serve.core.gateway import ERROR_RESPONSES, IdempotencyKey, Key, gateway_of
from polydistill.serve.core.generate import generation_response
from polydistill.serve.routes.completions.protocol import CompletionRequest, CompletionResponse
from polydistill.serve.routes.completions.serving import completion_request

router = APIRouter()


@router.post("/v1/completions", response_model=CompletionResponse, responses=ERROR_RESPONSES)
async def completions(
    request: Request, body: CompletionRequest, key: Key, idempotency_key: IdempotencyKey = None
) -> Response:
    state = request.scope["state"]
    return await generation_response(
        gateway_of(request), completion_request, body, key, state, idempotency_key
    )
