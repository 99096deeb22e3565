"""Request and response schemas of `/v1/completions` (the legacy completions API)."""

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from polydistill.serve.core.wire import (
    ApiRequest,
    NonEmptyText,
    Seed,
    StopList,
    StreamOptions,
    TokenId,
    Usage,
)


class CompletionRequest(ApiRequest):
    model: str
    prompt: (
        NonEmptyText
        | Annotated[list[NonEmptyText], Field(min_length=1, max_length=256)]
        | Annotated[list[TokenId], Field(min_length=1)]
        | Annotated[
            list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1, max_length=256)
        ]
    )
    max_tokens: Annotated[int, Field(ge=0, lt=2**31)] | None = 16
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    n: Annotated[int, Field(ge=1, le=128)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: bool = False
    stop: Annotated[str, Field(min_length=1, max_length=200)] | StopList | None = None
    seed: Seed | None = None
    user: str | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
