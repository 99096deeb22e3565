"""The student samples answers to prompts: batched generation with a KV cache, seeded per sample.

    drawn = sample_answers(model, tokenizer, prompts, prompt_ids=[...], samples=2,
                           temperature=1.0, max_new_tokens=24, seed=0, refresh=3, batch_size=32)
    drawn.rows[i].text, drawn.rows[i].sampled, drawn.rows[i].answer_ids, drawn.retokenised

Prompts go through the student's own chat template (`chat.encode_prompts`), left-padded, to
`transformers`' `generate` (one KV cache per batch). Sampling is Gumbel-max: `generate` runs
greedy over logits / temperature plus Gumbel noise, and the noise of each row comes from its own
generator seeded by (seed, refresh, prompt id, sample). So a sample's random numbers do not
depend on which other rows share its batch or on the global torch RNG (which the training loop
owns and which this module leaves untouched), and argmax(logits / T + Gumbel) is an exact draw
from softmax(logits / T).

Every row keeps the student's sampled ids AND the ids the rest of the pipeline trains on: the
answer text decoded from the sample, rendered again by `chat.render_answer` (the completion
tokenized on its own, then end-of-turn), which is how teachers read it and how the alignment
aligns it. When that re-encoding does not give back the sampled ids (the student chose a
non-canonical split such as "1","2" for the token "12", a special token inside the answer, or
bytes that do not decode to text), the row is built from the re-encoding and counted as
`retokenised`; a sample cut at `max_new_tokens` is counted as `truncated` and still ends with
the end-of-turn token, graded by the teachers like every position.
"""

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedModel
from transformers import PreTrainedTokenizerBase as Tokenizer

from polydistill.chat import Prompt, encode_prompts, end_of_turn, pad_left, render_answer


@dataclass(frozen=True)
class Sample:
    """One sampled answer: `prompt` indexes the prompts given; `sampled` the student's ids
    (end-of-turn excluded); `prompt_ids` + `answer_ids` (end-of-turn included) the row."""

    prompt: int
    sample: int
    text: str
    sampled: list[int]
    prompt_ids: list[int]
    answer_ids: list[int]
    retokenised: bool
    truncated: bool


@dataclass(frozen=True)
class Samples:
    rows: list[Sample]

    @property
    def retokenised(self) -> int:
        """Samples whose decoded text re-encodes to other ids (their rows use the re-encoding)."""
        return sum(r.retokenised for r in self.rows)

    @property
    def truncated(self) -> int:
        """Samples cut at `max_new_tokens` before the student ended its turn."""
        return sum(r.truncated for r in self.rows)


def sample_seed(seed: int, refresh: int, prompt_id: int, sample: int) -> int:
    """The seed of one sample's noise: a hash, so nearby arguments give unrelated streams."""
    digest = hashlib.sha256(f"onpolicy|{seed}|{refresh}|{prompt_id}|{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class GumbelNoise(LogitsProcessor):
    """scores / temperature + Gumbel noise, row r drawing from its own generator; ids past
    `vocab_size` (embedding padding) get -inf. Greedy decoding over this samples exactly."""

    def __init__(self, seeds: Sequence[int], temperature: float, vocab_size: int) -> None:
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature, self.vocab_size = temperature, vocab_size

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        columns = scores.shape[1]
        noise = torch.stack(
            [
                torch.empty(columns, dtype=torch.float64).exponential_(generator=g).log_().neg_()
                for g in self.generators
            ]
        )
        noisy = scores.double().cpu() / self.temperature + noise
        noisy[:, self.vocab_size :] = -torch.inf
        return noisy.to(scores.device)


def _row(
    tokenizer: Tokenizer, prompt: Prompt, index: int, sample: int, sampled: list[int], cut: bool
) -> Sample:
    text = tokenizer.decode(sampled, clean_up_tokenization_spaces=False)
    ids, start = render_answer(tokenizer, prompt, text, "student")
    answer = ids[start:]
    return Sample(
        prompt=index,
        sample=sample,
        text=text,
        sampled=list(sampled),
        prompt_ids=ids[:start],
        answer_ids=answer,
        retokenised=answer[:-1] != list(sampled),
        truncated=cut,
    )


@torch.no_grad()
def _generate(
    model: PreTrainedModel,
    rows: Sequence[list[int]],
    seeds: Sequence[int],
    pad: int,
    end: int,
    temperature: float,
    max_new_tokens: int,
    vocab_size: int,
) -> list[tuple[list[int], bool]]:
    """Each row's sampled ids, cut before its first end-of-turn, and whether it never ended."""
    input_ids, attention_mask = pad_left(rows, pad)
    generated = model.generate(
        input_ids=input_ids.to(model.device),
        attention_mask=attention_mask.to(model.device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        logits_processor=LogitsProcessorList([GumbelNoise(seeds, temperature, vocab_size)]),
        eos_token_id=end,
        pad_token_id=pad,
        use_cache=True,
    )
    out = []
    for row in generated[:, input_ids.shape[1] :].tolist():
        out.append((row[: row.index(end)], False) if end in row else (row, True))
    return out


def sample_answers(
    model: PreTrainedModel,
    tokenizer: Tokenizer,
    prompts: Sequence[Prompt],
    *,
    prompt_ids: Sequence[int],
    samples: int,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    refresh: int,
    batch_size: int,
) -> Samples:
    """`samples` answers to each prompt, sample-major (`rows[s * len(prompts) + i]`).

    `prompt_ids`: a stable id per prompt (its index in the run's prompt list), which with `seed`,
    `refresh` and the sample number seeds the sample's noise. The model is put in eval mode for
    generation and back in its former mode after; the global RNG is not touched."""
    if len(prompt_ids) != len(prompts):
        raise ValueError(f"{len(prompt_ids)} prompt ids for {len(prompts)} prompts")
    encoded = encode_prompts(tokenizer, prompts, "student")
    end = end_of_turn(tokenizer, "student")
    pad = end if tokenizer.pad_token_id is None else tokenizer.pad_token_id
    jobs = [(s, i) for s in range(samples) for i in range(len(prompts))]
    training = model.training
    model.eval()
    rows: list[Sample] = []
    try:
        for first in range(0, len(jobs), batch_size):
            batch = jobs[first : first + batch_size]
            seeds = [sample_seed(seed, refresh, prompt_ids[i], s) for s, i in batch]
            drawn = _generate(
                model, [encoded[i] for _, i in batch], seeds, pad, end, temperature,
                max_new_tokens, len(tokenizer),
            )  # fmt: skip
            for (s, i), (ids, cut) in zip(batch, drawn, strict=True):
                rows.append(_row(tokenizer, prompts[i], i, s, ids, cut))
    finally:
        model.train(training)
    return Samples(rows)
