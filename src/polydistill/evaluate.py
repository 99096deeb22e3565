"""Scoring a checkpoint on the world's held-out sets.

Two numbers per domain:
- exact-match accuracy of greedy decoding through the model's own chat template;
- bits per byte of the gold answers given the prompt (teacher-forced, the answer's tokens only),
  which compares models whose tokenizers differ.
"""

import math
from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from polydistill.chat import encode_completions, encode_prompts, pad_left, pad_right
from polydistill.world.domains import Example, check

Progress = Callable[[int], None]


@torch.no_grad()
def greedy_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int,
    who: str,
    on_batch: Progress | None = None,
) -> list[str]:
    """Greedy completions, decoded without special tokens."""
    encoded = encode_prompts(tokenizer, prompts, who)
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
    examples: Sequence[Example],
    batch_size: int,
    who: str,
) -> tuple[float, int]:
    """Total bits of the gold answers (without end-of-turn) and their total UTF-8 bytes."""
    prompts = encode_prompts(tokenizer, [e.prompt for e in examples], who)
    answers = encode_completions(tokenizer, [e.answer for e in examples], end=False)
    bits, size = 0.0, sum(len(e.answer.encode()) for e in examples)
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
    examples: dict[str, list[Example]],
    max_new_tokens: int,
    batch_size: int,
    who: str,
    on_batch: Progress | None = None,
) -> dict[str, float]:
    """Per domain, the share of examples whose answer greedy decoding reproduces."""
    model.eval()
    accuracy: dict[str, float] = {}
    for domain, rows in examples.items():
        prompts = [e.prompt for e in rows]
        completions = greedy_completions(
            model, tokenizer, prompts, max_new_tokens, batch_size, who, on_batch
        )
        matches = sum(check(e, c) for e, c in zip(rows, completions, strict=True))
        accuracy[domain] = matches / len(rows)
    return accuracy


def evaluate_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    heldout: dict[str, list[Example]],
    max_new_tokens: int,
    batch_size: int,
    who: str,
    on_batch: Progress | None = None,
) -> dict:
    """Accuracy and bits per byte per domain, and the parameter count."""
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
