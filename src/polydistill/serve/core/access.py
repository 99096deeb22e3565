"""Which served models a key may use: its `--models` list and its lineage policy.

    deployment = model_for(gateway, key, body.model)   # the model, or a 404 / 403 ApiError
    visible = usable_models(gateway, key)              # what `/v1/models` lists to the key

A key created with `keys create --policy P` may use a model only if every teacher its signed
lineage records passes the policy (`lineage.rules.broken_rule`, the rules a run is gated by);
a model without a signed lineage has no teacher facts to check and is refused to such a key.
A refusal is a 403 naming the model, the teacher and the rule, before anything is reserved.
"""

from polydistill.lineage.rules import Policy, broken_rule
from polydistill.serve.core.api_errors import ApiError
from polydistill.serve.core.gateway import Deployment, Gateway
from polydistill.serve.core.served_lineage import ServedLineage
from polydistill.serve.metering.accounts import KeyRecord


def policy_refusal(model_id: str, lineage: ServedLineage | None, policy: Policy) -> str | None:
    """Why `policy` refuses the model (a sentence naming teacher and rule), or None."""
    if lineage is None or lineage.teachers is None:
        return (
            f"policy {policy.name!r} refuses the model {model_id!r}: it has no signed lineage "
            "recording its teachers' origin, publisher and licence"
        )
    for teacher in lineage.teachers:
        licence = teacher["licence"]
        rule = broken_rule(
            policy,
            origin=teacher["origin"],
            publisher=teacher["publisher"],
            licence=licence["id"],
            family=teacher["family"],
            obligations=licence["obligations"],
            commercial=licence["commercial"],
        )
        if rule is not None:
            return (
                f"policy {policy.name!r} refuses the model {model_id!r}: its teacher "
                f"{teacher['name']!r} breaks the rule {rule}"
            )
    return None


def _refusal(deployment: Deployment, key: KeyRecord) -> ApiError | None:
    model_id = deployment.served.model_id
    if key.models is not None and model_id not in key.models:
        return ApiError(
            403,
            f"this key may not use the model {model_id!r}",
            type="permission_error",
            code="model_not_allowed",
            param="model",
        )
    if key.policy is None:
        return None
    reason = policy_refusal(model_id, deployment.lineage, key.policy)
    if reason is None:
        return None
    return ApiError(403, reason, type="permission_error", code="model_not_allowed", param="model")


def model_for(gateway: Gateway, key: KeyRecord, model_id: str | None) -> Deployment:
    """The model `model_id` (None: the first served) if `key` may use it, else the 404/403."""
    deployment = gateway.models.get(model_id) if model_id is not None else gateway.default
    if deployment is None:
        raise ApiError(
            404, f"the model {model_id!r} does not exist", code="model_not_found", param="model"
        )
    refusal = _refusal(deployment, key)
    if refusal is not None:
        raise refusal
    return deployment


def usable_models(gateway: Gateway, key: KeyRecord) -> list[Deployment]:
    """The models `/v1/models` lists to `key`: those its list and its policy allow."""
    return [d for d in gateway.models.values() if _refusal(d, key) is None]
