"""Greedy answers of a model to records, in batches, through its own template.

    answers = greedy_answers(model, tokenizer, records, max_new_tokens=64, batch_size=32, who="x")

Prompts are encoded by `prompts.encode_records` (chat template, or BOS + raw text for
completion-style records), left-padded per batch in the given order, and decoded greedily until
the tokenizer's end-of-turn token or `max_new_tokens`; the answer is decoded without special
tokens.
"""

from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from polydistill.chat import pad_left
from polydistill.data.records import PromptRecord
from polydistill.evaluate.prompts import encode_records

Progress = Callable[[int], None]


@torch.no_grad()
def greedy_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[PromptRecord],
    max_new_tokens: int,
    batch_size: int,
    who: str,
    on_batch: Progress | None = None,
) -> list[str]:
    """Each record's greedy answer, decoded without special tokens."""
    encoded = encode_records(tokenizer, records, who)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[str] = []
    for start in range(0, len(encoded), batch_size):
        rows = encoded[start : start + batch_size]
        input_ids, attention_mask = pad_left(rows, pad)
        generated = model.generate(
            input_ids=input_ids.to(model.device),
            attention_mask=attention_mask.to(model.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=pad,
        )
        new = generated[:, input_ids.shape[1] :]
        out += tokenizer.batch_decode(new, skip_special_tokens=True)
        if on_batch:
            on_batch(len(rows))
    return out
