"""Response schemas of `/v1/models` and `/v1/models/{id}` (the NOTICE route is plain text)."""

from typing import Any, Literal

from pydantic import BaseModel


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "polydistill"
    context_length: int
    lineage: dict[str, Any] | None = None
    notices: list[dict[str, Any]] | None = None
    """Per teacher whose licence asks something of the model's users: the licence id and URL,
    its notice, naming rule, use restrictions and commercial limit (signed lineages only)."""


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
