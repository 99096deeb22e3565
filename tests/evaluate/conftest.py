"""A tiny Qwen3-architecture checkpoint with a trained byte-level tokenizer, saved once."""

from pathlib import Path

import pytest
import torch

from polydistill.config import ModelSize
from polydistill.world.architectures import build_model
from polydistill.world.real_vocab import stdlib_lines
from polydistill.world.tokenizers import train_tokenizer


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A folder loadable with AutoModelForCausalLM / AutoTokenizer (chat template, eos, pad)."""
    tokenizer = train_tokenizer("qwen", stdlib_lines(3000), 600)
    size = ModelSize(hidden_size=64, layers=2, heads=2, kv_heads=1, head_dim=32,
                     intermediate_size=128, max_positions=512)  # fmt: skip
    model = build_model("qwen", size, tokenizer, seed=3)
    # Wider weights than the default initialisation: greedy answers then vary from prompt to
    # prompt instead of repeating one token, so a grader's right and wrong cases both occur.
    torch.manual_seed(3)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" not in name:
                parameter.normal_(0, 0.2)
    folder = tmp_path_factory.mktemp("checkpoint")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def loaded(checkpoint):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    return model, AutoTokenizer.from_pretrained(checkpoint)


@pytest.fixture(scope="module")
def model64(loaded):
    """The model in float64, for direct reference computations."""
    import copy

    return copy.deepcopy(loaded[0]).double()
