"""The model cards `/v1/models` lists (id, creation time, context length, lineage and the
notices its teachers' licences require), filtered by the key's policy, and each model's
NOTICE."""

from polydistill.serve.core.access import model_for, usable_models
from polydistill.serve.core.api_errors import ApiError
from polydistill.serve.core.gateway import Deployment, Gateway
from polydistill.serve.metering.accounts import KeyRecord
from polydistill.serve.routes.models.protocol import ModelCard, ModelList


def model_card(deployment: Deployment) -> ModelCard:
    served, lineage = deployment.served, deployment.lineage
    return ModelCard(
        id=served.model_id,
        created=served.created,
        context_length=served.context_length,
        lineage=lineage.summary if lineage else None,
        notices=list(lineage.notices) if lineage and lineage.teachers is not None else None,
    )


def model_list(gateway: Gateway, key: KeyRecord) -> ModelList:
    """The models `key` may use (its policy decides; see `core.access`)."""
    return ModelList(data=[model_card(d) for d in usable_models(gateway, key)])


def one_model(gateway: Gateway, key: KeyRecord, model_id: str) -> ModelCard:
    """The card of `model_id`, or the 404 / 403."""
    return model_card(model_for(gateway, key, model_id))


def model_notice(gateway: Gateway, key: KeyRecord, model_id: str) -> str:
    """The NOTICE of `model_id` (what its teachers' licences require), or a 404 if its lineage
    is not signed (no licence facts recorded)."""
    lineage = model_for(gateway, key, model_id).lineage
    if lineage is None or lineage.notice_text is None:
        raise ApiError(
            404,
            f"the model {model_id!r} has no signed lineage, so no notices are recorded",
            code="notices_not_found",
        )
    return lineage.notice_text
