"""`GET /v1/models` and `GET /v1/models/{model_id}`."""

from fastapi import APIRouter, Request

from polydistill.serve.core.gateway import ERROR_RESPONSES, Key, gateway_of
from polydistill.serve.routes.models.protocol import ModelCard, ModelList
from polydistill.serve.routes.models.serving import model_list, one_model

router = APIRouter()


@router.get("/v1/models", responses=ERROR_RESPONSES)
async def list_models(request: Request, _: Key) -> ModelList:
    return model_list(gateway_of(request))


@router.get("/v1/models/{model_id}", responses=ERROR_RESPONSES)
async def get_model(request: Request, model_id: str, _: Key) -> ModelCard:
    return one_model(gateway_of(request), model_id)
