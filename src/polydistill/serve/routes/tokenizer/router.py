"""`POST /tokenize`, `POST /detokenize`, `GET /tokenizer_info` (vLLM's extensions), for the
model the request names (`model`; the first served model if none)."""

from typing import Any

from fastapi import APIRouter, Request

from polydistill.serve.core.access import model_for
from polydistill.serve.core.gateway import ERROR_RESPONSES, Key, gateway_of
from polydistill.serve.routes.tokenizer import serving
from polydistill.serve.routes.tokenizer.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)

router = APIRouter()


@router.post("/tokenize", responses=ERROR_RESPONSES)
async def tokenize(request: Request, body: TokenizeRequest, key: Key) -> TokenizeResponse:
    return serving.tokenize(model_for(gateway_of(request), key, body.model).served, body)


@router.post("/detokenize", responses=ERROR_RESPONSES)
async def detokenize(request: Request, body: DetokenizeRequest, key: Key) -> DetokenizeResponse:
    return serving.detokenize(model_for(gateway_of(request), key, body.model).served, body)


@router.get("/tokenizer_info", responses=ERROR_RESPONSES)
async def tokenizer_info(request: Request, key: Key, model: str | None = None) -> dict[str, Any]:
    return serving.tokenizer_info(model_for(gateway_of(request), key, model).served)
