"""Prompts and completions in a model's own chat template, as token ids.

Every model (world teacher, real checkpoint, student) is prompted through the chat template stored
with its tokenizer; the completion follows the generation prompt and ends with the tokenizer's
end-of-turn (`eos`) token. Prompt and completion are tokenized separately so that the boundary
between them is exact in every tokenizer.

A tokenizer without a chat template is a completion model's (a base checkpoint): its prompt is the
text itself, after the BOS token when the tokenizer adds one, and the completion is the text's
continuation, closed by `eos` as every answer is.
"""

import itertools
import random
from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from polydistill.errors import UserError


def completion_style(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the model reads prompts as plain text (its tokenizer has no chat template)."""
    return not getattr(tokenizer, "chat_template", None)


def bos_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """[BOS] when the tokenizer puts it before every text (Gemma, Llama), else [] (Qwen, GPT-2):
    what a completion model saw before its text in training."""
    bos = tokenizer.bos_token_id
    return [bos] if bos is not None and tokenizer("a")["input_ids"][:1] == [bos] else []


def render_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], who: str
) -> list[str]:
    """Each prompt as a user turn followed by the assistant's generation prompt; for a
    completion model (`completion_style`), the prompt text after its BOS."""
    if completion_style(tokenizer):
        bos = tokenizer.bos_token if bos_prefix(tokenizer) else ""
        return [bos + p for p in prompts]
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        for p in prompts
    ]


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], who: str
) -> list[list[int]]:
    texts = render_prompts(tokenizer, prompts, who)
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def encode_completions(
    tokenizer: PreTrainedTokenizerBase, completions: Sequence[str], end: bool = True
) -> list[list[int]]:
    """Completion ids, each followed by the end-of-turn token when `end`."""
    encoded = tokenizer(list(completions), add_special_tokens=False)["input_ids"]
    return [[*ids, tokenizer.eos_token_id] for ids in encoded] if end else encoded


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Ids of `text` alone: no BOS/EOS added, special-token strings inside it kept as text."""
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def end_of_turn(tokenizer: PreTrainedTokenizerBase, who: str) -> int:
    end = getattr(tokenizer, "eos_token_id", None)
    if end is None:
        raise UserError(
            f"{who}: tokenizer has no eos_token (the end-of-turn token that closes an answer); "
            "set eos_token in tokenizer_config.json"
        )
    return int(end)


def render_answer(
    tokenizer: PreTrainedTokenizerBase, prompt: str, completion: str, who: str
) -> tuple[list[int], int]:
    """A model's own rendering of a prompt and its answer: the user turn and generation prompt,
    the completion tokenized on its own, and the end-of-turn token; with the index of the first
    completion token. Every teacher scores, and the alignment aligns, exactly this sequence."""
    return render_answers(tokenizer, [prompt], [completion], who)[0]


def render_answers(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    completions: Sequence[str],
    who: str,
) -> list[tuple[list[int], int]]:
    """`render_answer` of each (prompt, completion); each distinct prompt is templated once."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    distinct = list(dict.fromkeys(prompts))
    prefixes = dict(zip(distinct, encode_prompts(tokenizer, distinct, who), strict=True))
    end = end_of_turn(tokenizer, who)
    bodies = (
        tokenizer(list(completions), add_special_tokens=False, split_special_tokens=True)[
            "input_ids"
        ]
        if completions
        else []
    )
    out = []
    for prompt, body in zip(prompts, bodies, strict=True):
        prefix = prefixes[prompt]
        if not prefix:
            what = "the prompt is empty" if completion_style(tokenizer) else "chat template"
            raise UserError(f"{who}: {what} renders nothing before the answer")
        out.append(([*prefix, *body, end], len(prefix)))
    return out


def pad_right(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def pad_left(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids, mask


def shuffled_stream(rows: int, seed: int) -> Callable[[int], int]:
    """Row at each position of an endless stream of shuffled epochs, by random access.

    The stream is the concatenation of permutations drawn one after another from
    `random.Random(seed)`; epochs are regenerated on demand (sequential access costs one shuffle
    per epoch, jumping back replays the shuffles from the start).
    """
    rng, epoch, order = random.Random(seed), -1, list(range(rows))

    def row_at(position: int) -> int:
        nonlocal rng, epoch, order
        wanted = position // rows
        if wanted < epoch:
            rng, epoch = random.Random(seed), -1
        while epoch < wanted:
            order = list(range(rows))
            rng.shuffle(order)
            epoch += 1
        return order[position % rows]

    return row_at


def batch_rows(
    lengths: Sequence[int],
    batch_size: int,
    seed: int,
    buckets: int = 1,
    first_rows: Sequence[int] = (),
    first_batches: int = 0,
) -> Callable[[int], list[int]]:
    """`rows_of(m)`: the rows of micro-batch m, a pure function of (seed, m).

    Batches are consecutive slices of `shuffled_stream`. With `buckets` > 1, each batch is
    sorted by row length and cut into that many micro-batches (micro-batch m is piece m % buckets
    of batch m // buckets): trained with `accumulation_steps=buckets`, an optimiser step sees
    exactly the rows of the plain batch, so its gradient is the same, but rows of one length
    share a micro-batch and pad less (the world's rows run from ~12 to ~34 tokens).

    A curriculum: the first `first_batches` batches are slices of a shuffled stream of
    `first_rows` alone; the batches after them slice the stream of every row from its start.
    """
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    if buckets > batch_size:
        raise ValueError(f"{buckets} length buckets cannot split a batch of {batch_size} rows")
    if first_batches and not first_rows:
        raise ValueError(f"{first_batches} first batches need rows to draw from")
    row_at = shuffled_stream(len(lengths), seed)
    first_at = shuffled_stream(len(first_rows), seed)
    cached: tuple[int, list[list[int]]] = (-1, [])

    def rows_in(batch: int) -> list[int]:
        if batch < first_batches:
            return [first_rows[first_at(batch * batch_size + j)] for j in range(batch_size)]
        start = (batch - first_batches) * batch_size
        return [row_at(start + j) for j in range(batch_size)]

    def rows_of(index: int) -> list[int]:
        nonlocal cached
        batch, piece = divmod(index, buckets)
        if cached[0] != batch:
            rows = rows_in(batch)
            if buckets > 1:
                rows.sort(key=lambda r: lengths[r])
            cuts = [round(k * batch_size / buckets) for k in range(buckets + 1)]
            cached = (batch, [rows[a:b] for a, b in itertools.pairwise(cuts)])
        return cached[1][piece]

    return rows_of


def supervised_batches(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    completions: Sequence[str],
    batch_size: int,
    seed: int,
    who: str,
    prompt_weight: float | Sequence[float] = 0.0,
    buckets: int = 1,
    first_rows: Sequence[int] = (),
    first_batches: int = 0,
) -> Callable[[int], dict[str, torch.Tensor]]:
    """`batch_at(i)`: the i-th batch of prompt + completion, labels on the completion; with a
    `prompt_weight` > 0 also on the prompt after its first token, each prompt token's loss
    weighted so (`label_weights`), as a language model of the whole text; `prompt_weight` is one
    weight or one per prompt.

    Batches come from `batch_rows` (with `buckets`: then `batch_at(i)` is micro-batch i; with
    `first_rows` / `first_batches`: a curriculum over the prompts' indices), so
    batch i depends on (seed, i) alone and a resumed training run sees the batches an
    uninterrupted one would.
    """
    if not prompts:
        raise UserError(f"{who}: empty dataset (no prompts)")
    rows = [
        (p, c)
        for p, c in zip(
            encode_prompts(tokenizer, prompts, who),
            encode_completions(tokenizer, completions),
            strict=True,
        )
    ]
    one_weight = isinstance(prompt_weight, int | float)
    weight_of = [prompt_weight] * len(rows) if one_weight else list(prompt_weight)
    if len(weight_of) != len(rows):
        raise ValueError(f"{who}: {len(weight_of)} prompt weights for {len(rows)} prompts")
    weighted = any(w > 0 for w in weight_of)
    lengths = [len(p) + len(c) for p, c in rows]
    rows_of = batch_rows(lengths, batch_size, seed, buckets, first_rows, first_batches)

    def batch_at(index: int) -> dict[str, torch.Tensor]:
        chosen = rows_of(index)
        sequences = [rows[i][0] + rows[i][1] for i in chosen]
        input_ids, attention_mask = pad_right(sequences, tokenizer.pad_token_id)
        labels = torch.full_like(input_ids, -100)
        weights = torch.ones(input_ids.shape)
        for row, i in enumerate(chosen):
            prompt, answer = rows[i]
            if weight_of[i] > 0:
                labels[row, 1 : len(prompt)] = torch.tensor(prompt[1:])
                weights[row, : len(prompt)] = weight_of[i]
            labels[row, len(prompt) : len(prompt) + len(answer)] = torch.tensor(answer)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        return {**batch, "label_weights": weights} if weighted else batch

    return batch_at
