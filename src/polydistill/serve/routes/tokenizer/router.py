"""`POST /tokenize`, `POST /detokenize`, `GET /tokenizer_info` (vLLM's extensions)."""

from typing import Any

from fastapi import APIRouter, Request

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
async def tokenize(request: Request, body: TokenizeRequest, _: Key) -> TokenizeResponse:
    return serving.tokenize(gateway_of(request).served, body)


@router.post("/detokenize", responses=ERROR_RESPONSES)
async def detokenize(request: Request, body: DetokenizeRequest, _: Key) -> DetokenizeResponse:
    return serving.detokenize(gateway_of(request).served, body)


@router.get("/tokenizer_info", responses=ERROR_RESPONSES)
async def tokenizer_info(request: Request, _: Key) -> dict[str, Any]:
    return serving.tokenizer_info(gateway_of(request).served)
