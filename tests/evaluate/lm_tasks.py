"""Direct computations the lm-eval tests compare with, and the tiny task files they write."""

import json
from pathlib import Path

import torch

QUESTIONS = [
    {"question": f"Question {i}: which word follows {w}?", "choices": c, "answer": i % len(c)}
    for i, (w, c) in enumerate(
        [("red", ["apple", "sky", "grass"]), ("one", ["two", "ten"]), ("cat", ["dog", "mouse"]),
         ("sun", ["moon", "star", "sea"]), ("def", ["return", "class"]), ("up", ["down", "left"])]
    )
]  # fmt: skip
CONTEXTS = [f"print(value_{i}) #" for i in range(6)]


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def write_task(folder: Path, name: str, rows: list[dict], body: str) -> Path:
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    path = folder / f"{name}.yaml"
    path.write_text(
        f"task: {name}\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n{body}"
    )
    return path


def multiple_choice_task(folder: Path) -> Path:
    body = (
        "output_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\n"
        "metric_list:\n  - metric: acc\n"
    )
    return write_task(folder, "polydistill_tiny_mc", QUESTIONS, body)


def direct_mc_accuracy(model64, tokenizer) -> float:
    """Accuracy of argmax over choices of log P(" " + choice | question), in float64."""
    correct = 0
    for row in QUESTIONS:
        context = encode(tokenizer, row["question"])
        scores = []
        for choice in row["choices"]:
            whole = encode(tokenizer, f"{row['question']} {choice}")
            with torch.no_grad():
                logprobs = model64(torch.tensor([whole])).logits[0].log_softmax(-1)
            scores.append(
                sum(float(logprobs[i - 1, whole[i]]) for i in range(len(context), len(whole)))
            )
        correct += int(max(range(len(scores)), key=scores.__getitem__) == row["answer"])
    return correct / len(QUESTIONS)


def direct_continuation(model64, tokenizer, context: str, tokens: int) -> str:
    ids, new = encode(tokenizer, context), []
    with torch.no_grad():
        for _ in range(tokens):
            token = int(model64(torch.tensor([ids + new])).logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            new.append(token)
    return tokenizer.decode(new, skip_special_tokens=True).split("\n")[0]
