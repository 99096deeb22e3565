"""Small models of the real teacher architectures, built from `transformers` configs.

`Gemma3ForCausalLM` (model_type `gemma3_text`), `Qwen3ForCausalLM` and the mixture-of-experts
`GptOssForCausalLM`, at sizes a 2-core CPU trains in minutes. They are saved as standard
checkpoints and read back with `AutoModelForCausalLM.from_pretrained`, the code path real
Gemma / gpt-oss / Qwen checkpoints take.
"""

from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from polydistill.config import ModelSize

MODEL_TYPES = {"gemma": "gemma3_text", "qwen": "qwen3", "gpt-oss": "gpt_oss"}


def _family_options(family: str, size: ModelSize) -> dict:
    if family == "gemma":
        return {
            "query_pre_attn_scalar": size.head_dim,
            "sliding_window": size.max_positions,
            "layer_types": ["full_attention"] * size.layers,
        }
    if family == "gpt-oss":
        # gpt-oss defaults to YaRN scaling for a 4k original context; plain RoPE fits our context.
        return {
            "num_local_experts": size.experts,
            "num_experts_per_tok": size.experts_per_token,
            "sliding_window": size.max_positions,
            "layer_types": ["full_attention"] * size.layers,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        }
    return {"tie_word_embeddings": True}


def build_model(
    family: str, size: ModelSize, tokenizer: PreTrainedTokenizerFast, seed: int
) -> PreTrainedModel:
    """A freshly initialised model of `family` sized for `tokenizer`'s vocabulary."""
    import torch

    config = AutoConfig.for_model(
        MODEL_TYPES[family],
        vocab_size=len(tokenizer),
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads,
        head_dim=size.head_dim,
        max_position_embeddings=size.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **_family_options(family, size),
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def count_parameters(model: PreTrainedModel) -> int:
    return sum(p.numel() for p in model.parameters())
