"""Training on fixed threads with deterministic algorithms: the same bits on every run."""

import pytest
import torch

from polydistill.chat import supervised_batches
from polydistill.config import ModelSize
from polydistill.train import sft_loss, train
from polydistill.train.reproducible import fixed_threads
from polydistill.world import domains
from polydistill.world.architectures import build_model
from polydistill.world.tokenizers import train_tokenizer

# GptOss's experts on two threads differ from run to run without deterministic algorithms.
SIZE = ModelSize(
    hidden_size=64,
    layers=1,
    heads=2,
    kv_heads=1,
    head_dim=32,
    intermediate_size=128,
    experts=4,
    experts_per_token=2,
)


@pytest.fixture(scope="module")
def examples():
    return domains.arithmetic(0, 256, 8, 2).train


@pytest.fixture(scope="module")
def tokenizer(examples):
    corpus = [f"{e.prompt} {e.answer}" for e in examples] + ["user assistant"] * 20
    return train_tokenizer("qwen", corpus, 400)


def trained(tokenizer, examples) -> list[torch.Tensor]:
    prompts, answers = [e.prompt for e in examples], [e.answer for e in examples]
    batches = supervised_batches(tokenizer, prompts, answers, 32, 0, "test data")
    model = build_model("gpt-oss", SIZE, tokenizer, 0)
    with fixed_threads(2):
        train(model, batches, sft_loss, steps=6, lr=3e-3)
    return [p.detach().clone() for p in model.parameters()]


def test_a_mixture_of_experts_trains_the_same_bits_twice_on_two_threads(tokenizer, examples):
    first, second = trained(tokenizer, examples), trained(tokenizer, examples)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_the_settings_of_the_process_come_back():
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with fixed_threads(before[0] + 1):
        assert torch.get_num_threads() == before[0] + 1
        assert torch.are_deterministic_algorithms_enabled()
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == before
