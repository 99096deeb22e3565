"""`generation_response`: validate a generation request for a key, then admit, run and bill
it. Both ways in call it: the FastAPI routes (`routes/completions`, `routes/chat`) and the
direct path (`fast_path`), so they cannot answer a request differently.
"""

from collections.abc import Callable
from typing import Any

from fastapi.responses import Response
from pydantic import BaseModel

from polydistill.serve.core.access import model_for
from polydistill.serve.core.gateway import Gateway
from polydistill.serve.core.limits import caps_for
from polydistill.serve.core.request_flow import (
    idempotent_request_id,
    request_fingerprint,
    run_generation,
)
from polydistill.serve.metering.accounts import KeyRecord

Build = Callable[..., Any]
"""A route's request builder (`completion_request`, `chat_request`): body, key, the model it
asked for (access checked already), caps and idempotency key to (GenerationRequest,
ResponseShape)."""


async def generation_response(
    gateway: Gateway,
    build: Build,
    body: BaseModel,
    key: KeyRecord,
    state: dict[str, Any],
    idempotency_key: str | None,
) -> Response:
    """Validate `body` for `key`, then admit, run and bill it (both paths call this). The
    model must exist and the key may use it (its list and its policy) before anything else."""
    deployment = model_for(gateway, key, body.model)  # type: ignore[attr-defined]
    caps = caps_for(key, gateway.settings.caps)
    generation, shape = build(body, key, deployment.served, caps, idempotency_key)
    fingerprint = None
    if idempotency_key is not None:
        state["request_id"] = idempotent_request_id(key.id, idempotency_key)
        fingerprint = request_fingerprint(generation.endpoint, body)
    return await run_generation(
        deployment.engine,
        deployment.meter,
        generation,
        shape,
        state["request_id"],
        gateway.settings.request_timeout_s,
        fingerprint,
    )
