"""Response schemas of `/v1/models` and `/v1/models/{id}`."""

from typing import Any, Literal

from pydantic import BaseModel


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "polydistill"
    context_length: int
    lineage: dict[str, Any] | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
