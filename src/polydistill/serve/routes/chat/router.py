"""`POST /v1/chat/completions`. Well-formed requests are usually answered by `fast_path`,
which calls the same `generation_response`; this route answers the rest and documents the
API."""

from fastapi import APIRouter, Request
from fastapi.responses import Response

from polydistill.serve.core.gateway import ERROR_RESPONSES, IdempotencyKey, Key, gateway_of
from polydistill.serve.core.generate import generation_response
from polydistill.serve.routes.chat.protocol import ChatCompletionRequest, ChatCompletionResponse
from polydistill.serve.routes.chat.serving import chat_request

router = APIRouter()


@router.post(
    "/v1/chat/completions", response_model=ChatCompletionResponse, responses=ERROR_RESPONSES
)
async def chat_completions(
    request: Request,
    body: ChatCompletionRequest,
    key: Key,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    state = request.scope["state"]
    return await generation_response(
        gateway_of(request), chat_request, body, key, state, idempotency_key
    )
