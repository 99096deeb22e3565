"""Loading a teacher checkpoint: a world teacher, a real Gemma, gpt-oss or Qwen checkpoint
directory on local disk, or a GGUF file (dequantised by transformers' GGUF loader, which needs
the `gguf` package), through `AutoModelForCausalLM` with `HF_HUB_OFFLINE=1`, so nothing
reaches a hub. A checkpoint without a chat template (a base model; GGUF files carry none) is
given one by `template` (a Jinja file or a built-in, `teachers.templates`).
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
from polydistill.teachers.templates import apply_template

os.environ.setdefault("HF_HUB_OFFLINE", "1")


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def is_gguf(path: Path) -> bool:
    return path.suffix.lower() == ".gguf"


def checkpoint_source(path: Path, who: str, tokenizer_only: bool = False) -> tuple[Path, dict]:
    """The folder `from_pretrained` reads, and its keyword arguments for this checkpoint (or,
    `tokenizer_only`, this tokenizer folder: a served teacher's weights are elsewhere)."""
    if is_gguf(path):
        if not path.is_file():
            raise UserError(f"{who}: no such GGUF file: {path}")
        return path.parent, {"gguf_file": path.name}
    if tokenizer_only and (path / "tokenizer.json").is_file():
        return path, {}
    if not (path / "config.json").is_file():
        raise UserError(f"{who}: not a Hugging Face checkpoint (no config.json): {path}")
    return path, {}


def _gguf_problem(error: Exception) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    if isinstance(error, ImportError):
        return f"{text} (GGUF files need `pip install gguf accelerate`)"
    return text


def load_tokenizer(path: Path, who: str, template: str | None = None) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer, checked for what alignment and chat rendering need; with
    `template`, that chat template replaces the checkpoint's own. `path` may also be a folder
    holding a tokenizer alone."""
    folder, extra = checkpoint_source(path, who, tokenizer_only=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, **extra)
    except (OSError, ValueError, ImportError) as error:
        problem = _gguf_problem(error) if extra else error
        raise UserError(f"{who}: cannot load the tokenizer from {path}: {problem}") from None
    return checked_tokenizer(tokenizer, who, template)


def checked_tokenizer(
    tokenizer: PreTrainedTokenizerBase, who: str, template: str | None = None
) -> PreTrainedTokenizerBase:
    """`tokenizer` checked as `load_tokenizer` checks it: a fast backend, `template` (if given)
    replacing its chat template, a pad token. Without a chat template (a base checkpoint) the
    model is used as a completion model (`chat.completion_style`); its fingerprint records it."""
    if not tokenizer.is_fast:
        raise UserError(
            f"{who}: tokenizer has no fast backend; convert it with "
            "AutoTokenizer.from_pretrained(path, use_fast=True).save_pretrained(path)"
        )
    if template is not None:
        apply_template(tokenizer, template, who)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: Path, who: str, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """The weights of a local checkpoint (a folder or a GGUF file), in evaluation mode."""
    folder, extra = checkpoint_source(path, who)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **extra)
    except (OSError, ValueError, ImportError) as error:
        problem = _gguf_problem(error) if extra else error
        raise UserError(f"{who}: cannot load the model from {path}: {problem}") from None
    model.eval()
    return model


def load_checkpoint(
    path: Path, who: str, dtype: torch.dtype = torch.float32, template: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model and tokenizer of a local checkpoint (a folder or a GGUF file), in evaluation mode."""
    tokenizer = load_tokenizer(path, who, template)
    return load_model(path, who, dtype), tokenizer
