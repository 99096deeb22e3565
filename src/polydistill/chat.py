"""Prompts and completions in a model's own chat template, as token ids.

    prompt = record_prompt(record)        # a `Prompt`: what every model is asked
    ids = encode_prompts(tokenizer, [prompt, "12+7="], who)

A `Prompt` is what a teacher or the student is asked, in one of three shapes:
- a `str`: one user turn (the world's prompts, a `prompt` row, tests);
- a `Chat`: the conversation so far, a tuple of `Turn`s (system, user and earlier assistant
  turns, ending with a user turn; a `messages` row with more than one user turn);
- a `PlainText`: completion-style text (a `text` row) that every model continues as it stands.

Every model renders a chat prompt through its tokenizer's chat template, exactly as
`apply_chat_template(messages, add_generation_prompt=True)` does: a template that folds a system
turn into the first user turn (Gemma 3's) folds it, one that refuses it (Gemma 2's) is a
one-line error with its message. The completion follows the generation prompt and ends with the
end-of-turn (`eos`) token; prompt and completion are tokenized separately, so the boundary
between them is exact in every tokenizer.

A tokenizer without a chat template is a completion model's (a base checkpoint): its prompt is
the text after the BOS when the tokenizer adds one (`bos_prefix`), the completion its
continuation, closed by `eos`. It reads a one-user-turn prompt as its text and refuses a
conversation (no plain-text form). `PlainText` is plain text to every model, a chat model too:
text to continue, not a question to answer, as evaluation reads it (the student trains on what
it is scored on).
"""

import itertools
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jinja2
import torch
from transformers import PreTrainedTokenizerBase

from polydistill.data.records import PromptRecord, Turn, prompt_id
from polydistill.errors import UserError

Chat = tuple[Turn, ...]
"""A conversation so far: optional system turn, user and assistant turns, ending with a user
turn (as `data` reads a `messages` row)."""


@dataclass(frozen=True)
class PlainText:
    """A completion-style prompt: text that every model continues as it stands, no template."""

    text: str


Prompt = str | Chat | PlainText
"""What a model is asked: one user turn (`str`), a conversation (`Chat`) or text (`PlainText`)."""


def canonical(prompt: Prompt) -> Prompt:
    """`prompt`, a one-user-turn `Chat` as its `str` (the two render alike everywhere)."""
    if isinstance(prompt, tuple) and len(prompt) == 1 and prompt[0].role == "user":
        return prompt[0].content
    return prompt


def record_prompt(record: PromptRecord) -> Prompt:
    """The prompt of a record: its text, its only user turn, or its whole conversation."""
    if record.text is not None:
        return PlainText(record.text)
    return canonical(record.messages or ())


def prompt_key(prompt: Prompt) -> str:
    """A string that identifies the whole prompt (store rows, seeds, hashes): a `str` prompt is
    its own key (keys of captured world stores stay as they were), any other shape its JSON,
    which starts with `{"`; a `str` that starts so is wrapped too, so no two prompts share one."""
    prompt = canonical(prompt)
    if isinstance(prompt, str):
        return json.dumps({"prompt": prompt}) if prompt.startswith('{"') else prompt
    if isinstance(prompt, PlainText):
        return json.dumps({"text": prompt.text})
    return json.dumps({"messages": [[turn.role, turn.content] for turn in prompt]})


def prompt_contents(prompt: Prompt) -> list[str]:
    """The prompt's own texts (each turn's content), markup aside."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, PlainText):
        return [prompt.text]
    return [turn.content for turn in prompt]


def prompt_bytes(prompt: Prompt) -> int:
    """UTF-8 bytes of the prompt's texts: what bits per byte of a prompt divide by."""
    return sum(len(text.encode("utf-8")) for text in prompt_contents(prompt))


def completion_style(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the model reads prompts as plain text (its tokenizer has no chat template)."""
    return not getattr(tokenizer, "chat_template", None)


def bos_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """[BOS] when the tokenizer puts it before every text (Gemma, Llama), else [] (Qwen, GPT-2):
    what a completion model saw before its text in training."""
    bos = tokenizer.bos_token_id
    return [bos] if bos is not None and tokenizer("a")["input_ids"][:1] == [bos] else []


def _name(prompt: str | Chat, name: str | None) -> str:
    """How an error names a prompt: `name` (a record's origin), else its record id."""
    return name or f"prompt {prompt_id(_turns(prompt), None)}"


def _plain(
    tokenizer: PreTrainedTokenizerBase, prompt: Prompt, who: str, name: str | None = None
) -> str | None:
    """The text a model reads as it stands (None: through its chat template); a conversation
    for a completion model is a one-line error naming the prompt (`name`, else its id)."""
    prompt = canonical(prompt)
    if isinstance(prompt, PlainText):
        return prompt.text
    if not completion_style(tokenizer):
        return None
    if isinstance(prompt, str):
        return prompt
    roles = "+".join(turn.role for turn in prompt)
    raise UserError(
        f"{who}: {_name(prompt, name)} is a conversation ({roles}), and the "
        "tokenizer has no chat template to render it; give the model one (`template:`) or "
        "ask it prompts of one user turn or text rows"
    )


def _turns(prompt: str | Chat) -> Chat:
    return (Turn("user", prompt),) if isinstance(prompt, str) else prompt


def render_prompt(
    tokenizer: PreTrainedTokenizerBase, prompt: Prompt, who: str, name: str | None = None
) -> str:
    """The prompt as the model reads it: through its chat template with the generation prompt
    (`apply_chat_template`, nothing added or left out), or its plain text after the BOS.
    `name` names the prompt in errors (a record's origin; else its record id)."""
    text = _plain(tokenizer, prompt, who, name)
    if text is not None:
        return (tokenizer.bos_token if bos_prefix(tokenizer) else "") + text
    turns = _turns(prompt)
    messages = [{"role": turn.role, "content": turn.content} for turn in turns]
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except jinja2.TemplateError as error:  # the template's own refusal (`raise_exception`)
        roles = "+".join(turn.role for turn in turns)
        raise UserError(
            f"{who}: the chat template refuses {_name(turns, name)} ({roles}): {error}"
        ) from None


def render_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], who: str
) -> list[str]:
    """`render_prompt` of each prompt."""
    return [render_prompt(tokenizer, p, who) for p in prompts]


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    who: str,
    names: Sequence[str] | None = None,
) -> list[list[int]]:
    """Each prompt's ids: its chat rendering tokenized as `apply_chat_template` tokenizes it
    (markup strings as special tokens), or the BOS and the plain text (`encode_text`: any
    special-token string in it stays text, as in the text the model was trained on). `names`
    (one per prompt) name them in errors. Each kind is tokenized in one batch."""
    named = list(names) if names is not None else [None] * len(prompts)
    plain = [_plain(tokenizer, p, who, n) for p, n in zip(prompts, named, strict=True)]
    out: list[list[int]] = [[] for _ in prompts]
    templated = [i for i, text in enumerate(plain) if text is None]
    if templated:
        rendered = [render_prompt(tokenizer, prompts[i], who, named[i]) for i in templated]
        encoded = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        for i, ids in zip(templated, encoded, strict=True):
            out[i] = ids
    as_text = [i for i, text in enumerate(plain) if text is not None]
    if as_text:
        bos = bos_prefix(tokenizer)
        texts = [plain[i] for i in as_text]
        encoded = tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        for i, ids in zip(as_text, encoded, strict=True):
            out[i] = bos + ids  # as `encode_text` encodes each
    return out


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
    tokenizer: PreTrainedTokenizerBase, prompt: Prompt, completion: str, who: str
) -> tuple[list[int], int]:
    """A model's own rendering of a prompt and its answer: the prompt and generation prompt,
    the completion tokenized on its own, and the end-of-turn token; with the index of the first
    completion token. Every teacher scores, and the alignment aligns, exactly this sequence."""
    return render_answers(tokenizer, [prompt], [completion], who)[0]


def render_answers(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
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
            plain = completion_style(tokenizer) or isinstance(prompt, PlainText)
            what = "the prompt is empty" if plain else "chat template"
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
    prompts: Sequence[Prompt],
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
