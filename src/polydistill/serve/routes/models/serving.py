"""The model cards `/v1/models` lists: id, creation time, context length and lineage."""

from polydistill.serve.core.api_errors import ApiError
from polydistill.serve.core.gateway import Gateway
from polydistill.serve.routes.models.protocol import ModelCard, ModelList


def model_card(gateway: Gateway) -> ModelCard:
    served = gateway.served
    return ModelCard(
        id=served.model_id,
        created=served.created,
        context_length=served.context_length,
        lineage=gateway.lineage,
    )


def model_list(gateway: Gateway) -> ModelList:
    return ModelList(data=[model_card(gateway)])


def one_model(gateway: Gateway, model_id: str) -> ModelCard:
    """The card of `model_id`, or a 404."""
    card = model_card(gateway)
    if model_id != card.id:
        raise ApiError(404, f"the model {model_id!r} does not exist", code="model_not_found")
    return card
