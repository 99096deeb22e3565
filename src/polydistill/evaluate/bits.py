"""Bits per byte of reference answers: how well a model predicts them, across tokenizers.

    bits, size = reference_bits(model, tokenizer, records, batch_size=32, who="student")
    bits / size   # bits per byte

The model reads each prompt in its own template (`prompts.encode_records`) followed by the
reference tokenized on its own (no end-of-turn token, special-token strings kept as text);
the bits are minus the log2-probability of the reference's tokens alone, and the bytes are the
reference's UTF-8 bytes, so models with different tokenizers are compared on the same text.
"""

import math
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from polydistill.chat import encode_text, pad_right
from polydistill.data.records import PromptRecord
from polydistill.errors import UserError
from polydistill.evaluate.prompts import encode_records


def reference_ids(
    tokenizer: PreTrainedTokenizerBase, records: Sequence[PromptRecord], who: str
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, reference ids) of each record."""
    prompts = encode_records(tokenizer, records, who)
    references = [encode_text(tokenizer, r.reference or "") for r in records]
    return list(zip(prompts, references, strict=True))


@torch.no_grad()
def reference_bits(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[PromptRecord],
    batch_size: int,
    who: str,
) -> tuple[float, int]:
    """Total bits of the references given their prompts, and their total UTF-8 bytes."""
    rows = reference_ids(tokenizer, records, who)
    size = sum(len((r.reference or "").encode()) for r in records)
    if size == 0:
        raise UserError(f"{who}: every reference answer is empty; bits per byte need some text")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    bits = 0.0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        input_ids, attention_mask = pad_right([p + a for p, a in chunk], pad)
        logits = model(
            input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device)
        ).logits
        logprobs = logits.float().log_softmax(-1).cpu()
        for row, (prompt, answer) in enumerate(chunk):
            first = len(prompt)
            targets = input_ids[row, first : first + len(answer)]
            picked = logprobs[row, first - 1 : first - 1 + len(answer)].gather(-1, targets[:, None])
            bits -= picked.sum().item() / math.log(2)
    return bits, size
