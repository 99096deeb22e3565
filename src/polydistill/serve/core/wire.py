"""What every route's schemas share: strict request models, token ids, stop lists, usage.

Requests are validated strictly: wrong types, out-of-range numbers and malformed prompts are
400s before anything is reserved. Unknown fields are ignored, as OpenAI-compatible servers do.
Responses are built with pydantic models, so the OpenAPI document describes what is sent.
Each route's own schemas are in `routes/<route>/protocol.py`.
"""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

TokenId = Annotated[int, Field(ge=0, lt=2**31)]
Seed = Annotated[int, Field(ge=-(2**63), lt=2**64)]
StopList = Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]], Field(max_length=4)]
NonEmptyText = Annotated[str, Field(min_length=1)]


class ApiRequest(BaseModel):
    """The base of every request body: strict types, unknown fields ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(ApiRequest):
    include_usage: bool = False


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
