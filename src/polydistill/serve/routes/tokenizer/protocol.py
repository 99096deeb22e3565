"""Request and response schemas of `/tokenize`, `/detokenize` (vLLM's extensions)."""

from typing import Annotated

from pydantic import BaseModel, Field, model_validator

from polydistill.serve.core.wire import ApiRequest, TokenId
from polydistill.serve.routes.chat.protocol import ChatMessage


class TokenizeRequest(ApiRequest):
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=1024)] | None = None
    add_special_tokens: bool = False
    model: str | None = None

    @model_validator(mode="after")
    def _one_input(self) -> "TokenizeRequest":
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt and messages")
        return self


class DetokenizeRequest(ApiRequest):
    tokens: Annotated[list[TokenId], Field(max_length=1_000_000)]
    model: str | None = None


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str
