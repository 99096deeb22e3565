"""Scoring a checkpoint on held-out prompt records, per tag.

    evaluate_model(model, tokenizer, {"facts": [record, ...]}, max_new_tokens, batch_size, who)

Each record is asked through the model's own chat template (its messages; a completion-style
record's text as it is) and graded against its `reference`. Two numbers per tag:
- exact-match accuracy of greedy decoding through the model's own chat template;
- bits per byte of the gold answers given the prompt (teacher-forced, the answer's tokens only),
  which compares models whose tokenizers differ.
"""

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from polydistill.chat import encode_completions, encode_text, pad_left, pad_right
from polydistill.data import PromptRecord
from polydistill.errors import UserError

Progress = Callable[[int], None]


def encode_records(
    tokenizer: PreTrainedTokenizerBase, records: Sequence[PromptRecord], who: str
) -> list[list[int]]:
    """Each record's prompt ids: its chat through the template, with the generation prompt."""
    if any(not r.completion_style for r in records) and not getattr(
        tokenizer, "chat_template", None
    ):
        raise UserError(f"{who}: tokenizer has no chat template; add one to tokenizer_config.json")
    return [
        encode_text(tokenizer, r.text)
        if r.completion_style
        else tokenizer(
            tokenizer.apply_chat_template(r.chat(), add_generation_prompt=True, tokenize=False),
            add_special_tokens=False,
        )["input_ids"]
        for r in records
    ]


def _reference(record: PromptRecord, who: str) -> str:
    if record.reference is None:
        raise UserError(f"{who}: held-out prompt {record.origin or record.id} has no reference")
    return record.reference


@torch.no_grad()
def greedy_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[PromptRecord],
    max_new_tokens: int,
    batch_size: int,
    who: str,
    on_batch: Progress | None = None,
) -> list[str]:
    """Greedy completions, decoded without special tokens."""
    encoded = encode_records(tokenizer, prompts, who)
    out: list[str] = []
    for start in range(0, len(encoded), batch_size):
        rows = encoded[start : start + batch_size]
        input_ids, attention_mask = pad_left(rows, tokenizer.pad_token_id)
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        new = generated[:, input_ids.shape[1] :]
        out += tokenizer.batch_decode(new, skip_special_tokens=True)
        if on_batch:
            on_batch(len(rows))
    return out


@torch.no_grad()
def answer_bits(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[PromptRecord],
    batch_size: int,
    who: str,
) -> tuple[float, int]:
    """Total bits of the references (without end-of-turn) and their total UTF-8 bytes."""
    prompts = encode_records(tokenizer, examples, who)
    references = [_reference(e, who) for e in examples]
    answers = encode_completions(tokenizer, references, end=False)
    bits, size = 0.0, sum(len(r.encode()) for r in references)
    for start in range(0, len(examples), batch_size):
        chunk = range(start, min(start + batch_size, len(examples)))
        input_ids, attention_mask = pad_right(
            [prompts[i] + answers[i] for i in chunk], tokenizer.pad_token_id
        )
        logprobs = (
            model(input_ids=input_ids, attention_mask=attention_mask).logits.float().log_softmax(-1)
        )
        for row, i in enumerate(chunk):
            first = len(prompts[i])
            targets = input_ids[row, first : first + len(answers[i])]
            picked = logprobs[row, first - 1 : first - 1 + len(answers[i])].gather(
                -1, targets[:, None]
            )
            bits -= picked.sum().item() / math.log(2)
    return bits, size


def exact_match(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Mapping[str, Sequence[PromptRecord]],
    max_new_tokens: int,
    batch_size: int,
    who: str,
    on_batch: Progress | None = None,
) -> dict[str, float]:
    """Per tag, the share of records whose reference greedy decoding reproduces (after
    trimming surrounding whitespace)."""
    model.eval()
    accuracy: dict[str, float] = {}
    for domain, rows in examples.items():
        completions = greedy_completions(
            model, tokenizer, rows, max_new_tokens, batch_size, who, on_batch
        )
        matches = sum(
            c.strip() == _reference(e, who) for e, c in zip(rows, completions, strict=True)
        )
        accuracy[domain] = matches / len(rows)
    return accuracy


def evaluate_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    heldout: Mapping[str, Sequence[PromptRecord]],
    max_new_tokens: int,
    batch_size: int,
    who: str,
    on_batch: Progress | None = None,
) -> dict:
    """Accuracy and bits per byte per tag, and the parameter count."""
    accuracy = exact_match(model, tokenizer, heldout, max_new_tokens, batch_size, who, on_batch)
    bits_per_byte: dict[str, float] = {}
    for domain, examples in heldout.items():
        bits, size = answer_bits(model, tokenizer, examples, batch_size, who)
        bits_per_byte[domain] = bits / size
    return {
        "accuracy": accuracy,
        "bits_per_byte": bits_per_byte,
        "params": sum(p.numel() for p in model.parameters()),
    }
