"""Token ids for a prompt or messages, text for token ids, and the tokenizer's description."""

from typing import Any

from polydistill.serve.core.limits import check_token_ids
from polydistill.serve.core.served_model import ServedModel
from polydistill.serve.routes.chat.serving import chat_prompt_ids
from polydistill.serve.routes.tokenizer.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)


def tokenize(served: ServedModel, body: TokenizeRequest) -> TokenizeResponse:
    if body.messages is not None:
        ids = chat_prompt_ids(served, body.messages)
    else:
        encoded = served.tokenizer(body.prompt, add_special_tokens=body.add_special_tokens)
        ids = list(encoded["input_ids"])
    return TokenizeResponse(count=len(ids), max_model_len=served.context_length, tokens=ids)


def detokenize(served: ServedModel, body: DetokenizeRequest) -> DetokenizeResponse:
    if body.tokens:
        check_token_ids(body.tokens, served.vocab_size, "tokens")
    return DetokenizeResponse(prompt=served.decode(body.tokens))


def tokenizer_info(served: ServedModel) -> dict[str, Any]:
    return served.tokenizer_info()
