"""Tiny decoder-only models of four architectures and a small trained tokenizer, for the student
start and export tests: Gemma 3 (sliding and full attention layers, tied head), Qwen 3 (untied),
gpt-oss (mixture of experts, sliding and full layers) and Llama.
"""

import functools
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from polydistill.world.tokenizers import train_tokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "A student learns from several teachers, each with its own vocabulary.",
    "Numbers like 12, 345 and 6789 are split into digits by some tokenizers.",
    "Where does the river go? It flows to the sea, past the old mill.",
] * 20
PROMPT = "Where does the quick brown fox go? It jumps over the river."
LAYERS = 4
MIXED = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]


@functools.cache
def _tokenizer():
    return train_tokenizer("qwen", CORPUS, 400)


def tiny_tokenizer():
    """A ChatML (Qwen-style) byte-level BPE of 400 tokens; a fresh copy on each call."""
    import copy

    return copy.deepcopy(_tokenizer())


def _family_options(model_type: str) -> dict:
    if model_type == "gemma3_text":
        return {"layer_types": MIXED, "sliding_window": 4, "query_pre_attn_scalar": 32}
    if model_type == "gpt_oss":
        return {
            "layer_types": MIXED,
            "sliding_window": 4,
            "num_local_experts": 2,
            "num_experts_per_tok": 1,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        }
    return {"tie_word_embeddings": False}


def tiny_model(model_type: str, vocab_size: int, seed: int = 0, **sizes) -> PreTrainedModel:
    """A freshly initialised model of `model_type` (4 layers, width 64 unless `sizes` say)."""
    options = {
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "max_position_embeddings": 128,
        **_family_options(model_type),
        **sizes,
    }
    config = AutoConfig.for_model(model_type, vocab_size=vocab_size, **options)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    # Wider weights than the default 0.02: layers then change the logits visibly, so a
    # dropped or misplaced layer cannot hide in rounding.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() > 1 and "embed" not in name:
                parameter.normal_(0.0, 0.15)
    return model.eval()


def save_checkpoint(folder: Path, model: PreTrainedModel, tokenizer) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
