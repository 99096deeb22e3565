"""Distilling a student from one teacher that shares its tokenizer: completions, targets, loss.

    data = distillation_data(teacher, tokenizer, prompts, top_k=32, temperature=1.0, ...)
    train(student, distillation_batches(data, pad_id, 64, seed),
          distillation_loss("forward_kl", beta=0.5, temperature=1.0, ce_weight=0.0,
                            vocab_size=len(tokenizer)), steps=..., lr=...)

1. Completions: the teacher answers every prompt through the chat template, greedily and then
   sampled (`samples` completions per prompt), each cut after its first end-of-turn token. Only
   prompts come in, so a gold answer can never reach the student.
2. Targets: one forward pass of the teacher over prompt + completion gives, at every position
   that predicts a completion token, its top-k log-probabilities and the tail mass outside them
   (`targets.SparseTargets`), at the distillation temperature; computed once, batched, without
   gradients. The tokenizers are identical (`check_same_tokenizer`), so teacher ids are student
   ids; another tokenizer needs the alignment path (`polydistill.align`), not wired here.
3. Loss: the student's decoder runs to its final hidden states, the completion positions are
   picked, and the chunked `losses.distill_loss_parts` (fused with the lm_head, summed over
   positions) gives the loss, so the `[tokens × vocab]` student logits never exist.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from polydistill.chat import pad_left, pad_right, shuffled_stream
from polydistill.errors import UserError
from polydistill.losses import distill_loss_parts
from polydistill.targets import SparseTargets, targets_from_logits
from polydistill.train import Batch, BatchFn, LossFn, LossOutput

IGNORE = -100
Progress = Callable[[int, int], None]  # (rows done in this batch, tokens in this batch)


@dataclass(frozen=True)
class DistillationData:
    """Training rows: prompt and teacher completion ids, and the targets of every completion
    position. Row r's targets are `targets[offsets[r]:offsets[r + 1]]`, one per completion token
    (the position before each token predicts it)."""

    prompts: list[list[int]]
    completions: list[list[int]]
    targets: SparseTargets
    offsets: list[int]

    def __len__(self) -> int:
        return len(self.prompts)


def check_same_tokenizer(
    teacher: PreTrainedTokenizerBase, student: PreTrainedTokenizerBase, who: str
) -> None:
    """Same vocabulary, same splitting, same chat template and end-of-turn: ids map one to one."""
    same = (
        teacher.backend_tokenizer.to_str() == student.backend_tokenizer.to_str()
        and teacher.chat_template == student.chat_template
        and teacher.eos_token_id == student.eos_token_id
    )
    if not same:
        raise UserError(
            f"{who}: its tokenizer differs from the student's; cross-tokenizer distillation "
            "needs the alignment path (polydistill.align.render / align.project), which is not "
            "wired into distillation yet"
        )


@torch.no_grad()
def teacher_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: Sequence[list[int]],
    max_new_tokens: int,
    batch_size: int,
    samples: int = 1,
    seed: int = 0,
    on_batch: Progress | None = None,
) -> list[list[int]]:
    """`samples` completions per prompt, as token ids up to and including the end-of-turn.

    Completion `j * len(prompt_ids) + i` answers prompt i: j = 0 greedy, later ones sampled from
    the teacher's full distribution (temperature 1), seeded by `seed` without touching the
    caller's random state. A completion the teacher did not finish within `max_new_tokens` is kept
    as generated, without an end-of-turn.
    """
    model.eval()
    out: list[list[int]] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for sample in range(samples):
            for start in range(0, len(prompt_ids), batch_size):
                rows = prompt_ids[start : start + batch_size]
                done = _generate(model, tokenizer, rows, max_new_tokens, sample > 0)
                out += done
                if on_batch:
                    on_batch(len(rows), sum(len(c) for c in done))
    return out


def _generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[list[int]],
    max_new_tokens: int,
    sample: bool,
) -> list[list[int]]:
    input_ids, attention_mask = pad_left(rows, tokenizer.pad_token_id)
    # Sampling draws from the teacher's own distribution: no temperature, top-k or top-p.
    how = (
        {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
        if sample
        else {"do_sample": False}
    )
    generated = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **how,
    )
    completions = []
    for row in generated[:, input_ids.shape[1] :].tolist():
        end = row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
        completions.append(row[:end])
    return completions


@torch.no_grad()
def teacher_targets(
    model: PreTrainedModel,
    prompt_ids: Sequence[list[int]],
    completion_ids: Sequence[list[int]],
    pad_id: int,
    top_k: int,
    temperature: float,
    vocab_size: int,
    batch_size: int,
    on_batch: Progress | None = None,
) -> tuple[SparseTargets, list[int]]:
    """The teacher's top-k + tail at every completion position, rows in order, and row offsets.

    `vocab_size` is the student's vocabulary; teacher lm_head rows past it must be padding.
    """
    model.eval()
    pieces: list[SparseTargets] = []
    offsets = [0]
    for start in range(0, len(prompt_ids), batch_size):
        chunk = range(start, min(start + batch_size, len(prompt_ids)))
        sequences = [prompt_ids[i] + completion_ids[i] for i in chunk]
        input_ids, attention_mask = pad_right(sequences, pad_id)
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        positions = []
        for row, i in enumerate(chunk):
            first = len(prompt_ids[i]) - 1  # this position predicts the completion's first token
            positions.append(logits[row, first : first + len(completion_ids[i])])
            offsets.append(offsets[-1] + len(completion_ids[i]))
        pieces.append(
            targets_from_logits(torch.cat(positions), top_k, temperature, vocab_size=vocab_size)
        )
        if on_batch:
            on_batch(len(chunk), int(attention_mask.sum()))
    joined = SparseTargets(
        ids=torch.cat([p.ids for p in pieces]),
        logprobs=torch.cat([p.logprobs for p in pieces]),
        tail=torch.cat([p.tail for p in pieces]),
        mask=torch.ones(offsets[-1], dtype=torch.bool),
    )
    return joined, offsets


def distillation_data(
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: Sequence[list[int]],
    *,
    top_k: int,
    temperature: float,
    max_new_tokens: int,
    batch_size: int,
    samples: int = 1,
    seed: int = 0,
    on_completions: Progress | None = None,
    on_targets: Progress | None = None,
) -> DistillationData:
    """Completions and targets of one teacher on the (chat-encoded) prompts; see the module."""
    if not prompt_ids:
        raise UserError("distillation: no prompts")
    completions = teacher_completions(
        teacher, tokenizer, prompt_ids, max_new_tokens, batch_size, samples, seed, on_completions
    )
    prompts = [list(p) for p in prompt_ids] * samples
    targets, offsets = teacher_targets(
        teacher,
        prompts,
        completions,
        tokenizer.pad_token_id,
        top_k,
        temperature,
        len(tokenizer),
        batch_size,
        on_targets,
    )
    return DistillationData(prompts, completions, targets, offsets)


def distillation_batches(
    data: DistillationData, pad_id: int, batch_size: int, seed: int
) -> BatchFn:
    """`batch_at(i)`: the i-th batch of rows (a pure function of `seed` and `i`), with labels on
    the completion tokens and the targets of those positions, in the same row-major order."""
    row_at = shuffled_stream(len(data), seed)
    ids, logprobs, tail = data.targets.ids, data.targets.logprobs, data.targets.tail

    def batch_at(index: int) -> Batch:
        chosen = [row_at(index * batch_size + j) for j in range(batch_size)]
        input_ids, attention_mask = pad_right(
            [data.prompts[r] + data.completions[r] for r in chosen], pad_id
        )
        labels = torch.full_like(input_ids, IGNORE)
        for row, r in enumerate(chosen):
            start = len(data.prompts[r])
            labels[row, start : start + len(data.completions[r])] = torch.tensor(
                data.completions[r]
            )
        spans = [slice(data.offsets[r], data.offsets[r + 1]) for r in chosen]
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "target_ids": torch.cat([ids[s] for s in spans]),
            "target_logprobs": torch.cat([logprobs[s] for s in spans]),
            "target_tail": torch.cat([tail[s] for s in spans]),
        }

    return batch_at


def final_hidden_states(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """The decoder's output after its final norm: what the lm_head multiplies, `[B, T, H]`."""
    decoder = model.get_decoder()
    return decoder(
        input_ids=input_ids, attention_mask=attention_mask, use_cache=False
    ).last_hidden_state


def fused_head_weight(model: PreTrainedModel) -> torch.Tensor:
    """The lm_head weight, for a model whose logits are exactly `hidden @ weight.T`."""
    if getattr(model.config, "final_logit_softcapping", None):
        raise UserError(
            f"student {type(model).__name__}: final_logit_softcapping is set, so its logits are "
            "not the lm_head product the fused loss computes; build it without soft-capping"
        )
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise UserError(f"student {type(model).__name__}: an lm_head with a bias is not supported")
    return head.weight


def distillation_loss(
    kind: str, beta: float, temperature: float, ce_weight: float, vocab_size: int
) -> LossFn:
    """`loss_fn(model, batch)` for `train`: the summed divergence (and cross-entropy on the
    teacher's completion tokens, weighted `ce_weight`) over the batch's completion positions."""

    def loss_fn(model: PreTrainedModel, batch: Batch) -> LossOutput:
        hidden = final_hidden_states(model, batch["input_ids"], batch["attention_mask"])
        labels = batch["labels"][:, 1:]
        counted = labels != IGNORE
        rows = hidden[:, :-1][counted]
        targets = SparseTargets(
            batch["target_ids"],
            batch["target_logprobs"],
            batch["target_tail"],
            torch.ones(rows.shape[0], dtype=torch.bool, device=rows.device),
        )
        parts = distill_loss_parts(
            rows,
            fused_head_weight(model),
            targets,
            kind,
            beta=beta,
            temperature=temperature,
            ce_weight=ce_weight,
            labels=labels[counted],
            vocab_size=vocab_size,
            reduction="sum",
        )
        logged = {
            "divergence": float(parts.divergence),
            "cross_entropy": float(parts.cross_entropy),
        }
        return LossOutput(parts.total, rows.shape[0], logged)

    return loss_fn
