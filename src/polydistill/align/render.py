"""Render one prompt and completion through a teacher's and the student's chat templates, aligned.

Each side renders the prompt (one user turn, a whole conversation or completion-style text:
`chat.Prompt`) with its own template and generation prompt (`chat.encode_prompts`),
then the completion text, then its family's end-of-turn token (the tokenizer's `eos_token`, as
everywhere in polydistill). The completion is tokenized on its own, as the model that wrote it
did, so the boundary between markup and completion is exact on both sides; special-token
strings inside the completion stay text. Only the completion bytes are aligned (`align.chunks`); the
markup, BOS and turn tokens that exist on one side only are outside the aligned region and so
outside the loss, and the two end-of-turn tokens are paired with each other.
"""

import numpy as np

from polydistill.align.chunks import AlignedSequence, aligned_sequence
from polydistill.align.tokenbytes import backend_of, token_byte_lengths, vocab_bytes
from polydistill.chat import Prompt, prompt_contents, render_answer
from polydistill.chat import encode_text as encode_hf_text
from polydistill.errors import UserError


def encode_text(tokenizer: object, text: str, who: str) -> list[int]:
    """Ids of `text` alone: no BOS/EOS added, special-token strings kept as text."""
    backend = backend_of(tokenizer, who)
    if backend is tokenizer:
        return backend.encode(text, add_special_tokens=False).ids
    return encode_hf_text(tokenizer, text)


def _check_utf8(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise UserError(
            f"{what} is not valid Unicode text ({error.reason} at character {error.start}); "
            "clean the data first"
        ) from None


def _side(tokenizer: object, prompt: Prompt, completion: str, who: str):
    backend_of(tokenizer, who)  # a slow tokenizer fails here, before its template is used
    ids, start = render_answer(tokenizer, prompt, completion, who)
    lengths = token_byte_lengths(vocab_bytes(tokenizer, who), ids[start:-1], completion, who)
    return np.asarray(ids, dtype=np.int64), start, lengths


def render_aligned(
    teacher_tokenizer: object,
    student_tokenizer: object,
    prompt: Prompt,
    completion: str,
    teacher: str,
) -> AlignedSequence:
    """Both chat renderings of (prompt, completion), aligned over the completion's bytes."""
    for text in prompt_contents(prompt):
        _check_utf8(text, "prompt")
    _check_utf8(completion, "answer")
    teacher_ids, teacher_start, teacher_lengths = _side(
        teacher_tokenizer, prompt, completion, f"teacher {teacher!r}"
    )
    student_ids, student_start, student_lengths = _side(
        student_tokenizer, prompt, completion, "student"
    )
    return aligned_sequence(
        completion,
        teacher_ids,
        student_ids,
        teacher_start,
        student_start,
        teacher_lengths,
        student_lengths,
        ends=True,
    )


def align_text(
    teacher_tokenizer: object, student_tokenizer: object, text: str, teacher: str
) -> AlignedSequence:
    """Plain text, no template: the first token of each side has no context to predict it."""
    sides = []
    named = ((teacher_tokenizer, f"teacher {teacher!r}"), (student_tokenizer, "student"))
    for tokenizer, who in named:
        ids = encode_text(tokenizer, text, who)
        sides.append((ids, token_byte_lengths(vocab_bytes(tokenizer, who), ids, text, who)))
    (teacher_ids, teacher_lengths), (student_ids, student_lengths) = sides
    return aligned_sequence(
        text, teacher_ids, student_ids, 0, 0, teacher_lengths, student_lengths, ends=False
    )
