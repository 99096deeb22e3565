"""Loading a teacher checkpoint: a world teacher or a real Gemma, gpt-oss or Qwen checkpoint
directory on local disk, through `AutoModelForCausalLM` with `HF_HUB_OFFLINE=1`, so nothing
reaches a hub.
"""

import os
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from polydistill.errors import UserError

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def load_tokenizer(path: Path, who: str) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer, checked for what alignment and chat rendering need."""
    if not (path / "config.json").is_file():
        raise UserError(f"{who}: not a Hugging Face checkpoint (no config.json): {path}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise UserError(f"{who}: cannot load the tokenizer from {path}: {error}") from None
    if not tokenizer.is_fast:
        raise UserError(
            f"{who}: tokenizer has no fast backend; convert it with "
            "AutoTokenizer.from_pretrained(path, use_fast=True).save_pretrained(path)"
        )
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"{who}: tokenizer has no chat template; add one to {path}/tokenizer_config.json"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_checkpoint(
    path: Path, who: str, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model and tokenizer of a local checkpoint, in evaluation mode."""
    tokenizer = load_tokenizer(path, who)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as error:
        raise UserError(f"{who}: cannot load the model from {path}: {error}") from None
    model.eval()
    return model, tokenizer
