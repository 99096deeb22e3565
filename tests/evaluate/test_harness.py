"""`evaluate_model` per tag against direct computations: greedy answers by an unbatched float64
argmax loop, bits per byte by a float64 forward pass over each prompt and reference alone."""

import math

import pytest
import torch

from polydistill.data.records import Turn, make_record
from polydistill.errors import UserError
from polydistill.evaluate import GradersConfig, evaluate_model, exact_match, greedy_answers
from polydistill.evaluate.bits import reference_bits
from polydistill.evaluate.graders import NormalisedGrader
from polydistill.world.domains import Example, check
from polydistill.world.prompts import example_record


def chat(question: str, reference: str | None = "x", tag: str = "qa", system: str = ""):
    turns = ((Turn("system", system),) if system else ()) + (Turn("user", question),)
    return make_record("test", "prompt", messages=turns, reference=reference, tag=tag)


def text(prefix: str, reference: str = " x", tag: str = "lm"):
    return make_record("test", "text", text=prefix, reference=reference, tag=tag)


QUESTIONS = [chat(f"What is {i} + {i * 3}?", system="Be brief." * (i % 2)) for i in range(6)]
TEXTS = [text(f"def function_{i}(value):") for i in range(5)]


def prompt_ids(tokenizer, record) -> list[int]:
    """The prompt as the model's own template renders it, through the tokenizer's own call."""
    if record.completion_style:
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        return bos + tokenizer(record.text, add_special_tokens=False)["input_ids"]
    return list(
        tokenizer.apply_chat_template(
            record.chat(), add_generation_prompt=True, tokenize=True, return_dict=False
        )
    )


def direct_greedy(model64, tokenizer, record, max_new_tokens: int) -> str:
    ids = prompt_ids(tokenizer, record)
    new: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model64(torch.tensor([ids + new])).logits[0, -1]
            token = int(logits.argmax())
            if token == tokenizer.eos_token_id:
                break
            new.append(token)
    return tokenizer.decode(new, skip_special_tokens=True)


def direct_bits(model64, tokenizer, record) -> float:
    prompt = prompt_ids(tokenizer, record)
    answer = tokenizer(record.reference, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logprobs = model64(torch.tensor([prompt + answer])).logits[0].log_softmax(-1)
    return -sum(
        float(logprobs[len(prompt) + i - 1, token]) for i, token in enumerate(answer)
    ) / math.log(2)


def test_batched_greedy_answers_are_the_unbatched_float64_argmax(loaded, model64):
    model, tokenizer = loaded
    records = QUESTIONS + TEXTS
    got = greedy_answers(model, tokenizer, records, 6, 4, "model")  # batches mix lengths
    want = [direct_greedy(model64, tokenizer, r, 6) for r in records]
    assert got == want
    assert len(set(want)) > len(records) // 2  # answers differ: a mix-up would show


def test_bits_per_byte_of_references_is_the_direct_float64_sum(loaded, model64):
    model, tokenizer = loaded
    records = [
        chat("Name a colour.", reference="Blue, like the sea — ünïcode too."),
        chat("Say hi.", reference="hi", system="You are terse."),
        text("The quick brown", reference=" fox jumps over the lazy dog"),
    ]
    bits, size = reference_bits(model, tokenizer, records, 2, "model")
    assert size == sum(len(r.reference.encode()) for r in records)
    want = sum(direct_bits(model64, tokenizer, r) for r in records)
    assert bits == pytest.approx(want, rel=1e-4)
    first, _ = reference_bits(model, tokenizer, records[:1], 2, "model")
    assert first == pytest.approx(direct_bits(model64, tokenizer, records[0]), rel=1e-4)
    assert first < bits  # each record's bits count once, not the batch's


def with_references(loaded, model64, records, max_new_tokens):
    """Records whose references are the model's own answer for the even ones, a wrong one for
    the odd ones; with the expected verdicts."""
    _, tokenizer = loaded
    answers = [direct_greedy(model64, tokenizer, r, max_new_tokens) for r in records]
    out = []
    for i, (record, answer) in enumerate(zip(records, answers, strict=True)):
        right = i % 2 == 0
        reference = answer.strip() if right else answer.strip() + " not this"
        out.append(make_record(record.split, record.layout, messages=record.messages,
                               text=record.text, reference=reference, tag=record.tag))  # fmt: skip
    return out, answers


def test_accuracy_per_tag_and_graders(loaded, model64):
    model, tokenizer = loaded
    questions, _ = with_references(loaded, model64, QUESTIONS, 5)
    texts, _ = with_references(loaded, model64, TEXTS, 5)
    heldout = {"qa": questions, "lm": texts}
    scores = evaluate_model(model, tokenizer, heldout, 5, 3, "model")
    assert scores["accuracy"] == {"qa": 3 / 6, "lm": 3 / 5}
    assert scores["params"] == sum(p.numel() for p in model.parameters())
    for tag, records in heldout.items():
        bits = sum(direct_bits(model64, tokenizer, r) for r in records)
        size = sum(len(r.reference.encode()) for r in records)
        assert scores["bits_per_byte"][tag] == pytest.approx(bits / size, rel=1e-4)
    # References shouted: exact match fails them all, the normalised grader of `qa` does not.
    shouted = {tag: [_upper(r) for r in rows] for tag, rows in heldout.items()}
    graders = GradersConfig(tags={"qa": NormalisedGrader()})
    accuracy = exact_match(model, tokenizer, shouted, 5, 3, "model", graders=graders)
    assert accuracy == {"lm": 0.0, "qa": 3 / 6}


def _upper(record):
    from dataclasses import replace

    return replace(record, reference=f"{record.reference.upper()}!")


def test_world_examples_score_as_their_records(loaded, model64):
    model, tokenizer = loaded
    questions = [f"Spell {word} backwards." for word in ("cat", "table", "river", "moon")]
    asked = [example_record(Example("strings", q, "?"), "test") for q in questions]
    answers = [direct_greedy(model64, tokenizer, r, 5).strip() for r in asked]
    examples = [
        Example("strings", q, a if i % 2 else f"{a} no")
        for i, (q, a) in enumerate(zip(questions, answers, strict=True))
    ]
    as_examples = evaluate_model(model, tokenizer, {"strings": examples}, 5, 4, "m")
    records = [example_record(e, "test") for e in examples]
    as_records = evaluate_model(model, tokenizer, {"strings": records}, 5, 4, "m")
    assert as_examples == as_records
    by_check = sum(check(e, a) for e, a in zip(examples, answers, strict=True)) / 4
    assert as_examples["accuracy"]["strings"] == by_check == 0.5


def test_a_prompt_without_reference_is_one_line(loaded):
    model, tokenizer = loaded
    rows = [chat("a?", reference="a"), chat("b?", reference=None)]
    with pytest.raises(UserError, match="1 of 2 prompts of tag 'qa' have no reference"):
        evaluate_model(model, tokenizer, {"qa": rows}, 2, 2, "m")
    with pytest.raises(UserError, match="tag 'qa' has no prompts"):
        evaluate_model(model, tokenizer, {"qa": []}, 2, 2, "m")
