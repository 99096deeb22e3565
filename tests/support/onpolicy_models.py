"""Tiny models for the on-policy tests: world tokenizer styles on a small Qwen3 architecture.

Teachers are random models made confident (their final norm scaled, so their next-token
distributions are peaked, as trained teachers' are); the student is a random model of the same
size. Different tokenizers (world-qwen, world-gemma vs world-student) make every grading a real
cross-tokenizer projection.
"""

import torch
from align_tokenizers import tokenizer

from polydistill.config import ModelSize
from polydistill.teachers.local import LocalTeacher
from polydistill.world import domains
from polydistill.world.architectures import build_model

SIZE = ModelSize(
    hidden_size=32, layers=1, heads=2, kv_heads=2, head_dim=16, intermediate_size=64,
    max_positions=160,
)  # fmt: skip


def tiny_model(style: str, seed: int, sharpness: float = 1.0):
    model = build_model("qwen", SIZE, tokenizer(f"world-{style}"), seed)
    with torch.no_grad():
        model.model.norm.weight.mul_(sharpness)
    return model.eval()


def teacher(name: str, style: str, seed: int, sharpness: float = 6.0) -> LocalTeacher:
    return LocalTeacher(name, tiny_model(style, seed, sharpness), tokenizer(f"world-{style}"), 16)


def prompts(n: int) -> list[str]:
    examples = domains.arithmetic(0, 200, 10, 3).train[: n // 2]
    examples += domains.strings(0, 200, 10, 3, 7, "abcdefghijklmnopqrstuvwxyz").train
    return [e.prompt for e in examples[:n]]
