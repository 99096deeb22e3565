"""Per-request checks shared by the generation routes: caps against model
extraction (`n`, `max_tokens`, logprobs), token ids and the context window.

Each failure is a 400 in the OpenAI shape, raised before anything is reserved (which model a
key may use is `core.access`).
"""

from dataclasses import dataclass

from polydistill.serve.core.api_errors import ApiError, bad_request
from polydistill.serve.metering.accounts import KeyRecord
from polydistill.serve.settings import Caps


@dataclass(frozen=True)
class EffectiveCaps:
    max_tokens: int
    max_n: int
    max_logprobs: int
    max_top_logprobs: int


def caps_for(key: KeyRecord, defaults: Caps) -> EffectiveCaps:
    """The key's own caps where it has them, else the server's; logprob caps never exceed
    what the API allows (5 and 20)."""
    logprobs = key.max_logprobs
    return EffectiveCaps(
        max_tokens=key.max_tokens or defaults.max_tokens,
        max_n=key.max_n or defaults.max_n,
        max_logprobs=min(logprobs if logprobs is not None else defaults.max_logprobs, 5),
        max_top_logprobs=min(logprobs if logprobs is not None else defaults.max_top_logprobs, 20),
    )


def check_at_most(value: int | None, cap: int, param: str) -> None:
    if value is not None and value > cap:
        raise bad_request(f"{param} must be at most {cap} for this key", param=param)


def check_token_ids(ids: list[int], vocab_size: int, param: str) -> None:
    if not ids:
        raise bad_request(f"{param} must not be empty", param=param)
    if max(ids) >= vocab_size:
        raise bad_request(f"{param} has token ids outside the vocabulary", param=param)


def completion_budget(
    requested: int | None, prompt_length: int, context_length: int, cap: int, param: str
) -> int:
    """`max_tokens` to reserve: the request's, or what fits in the context (up to the cap)."""
    room = context_length - prompt_length
    if room < 0 or (requested is not None and requested > room):
        asked = prompt_length + (requested or 0)
        raise ApiError(
            400,
            f"the model's context is {context_length} tokens; this request needs {asked}",
            code="context_length_exceeded",
            param=param,
        )
    if requested is None:
        return min(room, cap)
    check_at_most(requested, cap, param)
    return requested
