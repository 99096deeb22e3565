"""`GET /v1/models`, `GET /v1/models/{model_id}` and `GET /v1/models/{model_id}/notices`
(the model's NOTICE, plain text)."""

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from polydistill.serve.core.gateway import ERROR_RESPONSES, Key, gateway_of
from polydistill.serve.routes.models.protocol import ModelCard, ModelList
from polydistill.serve.routes.models.serving import model_list, model_notice, one_model

router = APIRouter()


@router.get("/v1/models", responses=ERROR_RESPONSES)
async def list_models(request: Request, key: Key) -> ModelList:
    return model_list(gateway_of(request), key)


@router.get("/v1/models/{model_id}", responses=ERROR_RESPONSES)
async def get_model(request: Request, model_id: str, key: Key) -> ModelCard:
    return one_model(gateway_of(request), key, model_id)


@router.get(
    "/v1/models/{model_id}/notices", response_class=PlainTextResponse, responses=ERROR_RESPONSES
)
async def get_notices(request: Request, model_id: str, key: Key) -> str:
    return model_notice(gateway_of(request), key, model_id)
