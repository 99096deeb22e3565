"""Where a student's first weights come from: a checkpoint, a depth-pruned teacher, or a config.

    student:
      init: {checkpoint: models/qwen3-0.6b}      # a Hugging Face folder (or a GGUF file)

    student:
      init:
        prune: {teacher_path: gemma-3-270m.gguf, keep: 6}   # or layers: [0, 5, 11, 17]
        template: gemma                                     # optional, as for teachers

    student:
      init: {config: configs/small.json, tokenizer: tokenizers/qwen3}   # random init, seeded

`init_student(init, seed, dtype)` returns the model, its tokenizer and a description for the
run's record (what kind of start, from which path, hashes of the weights, tokenizer and chat
template, the layers kept, and whether the student is chat or completion-style). A tokenizer
must have a fast backend; one without a chat template (and without `template:`) makes a
completion-style student. No `init` (None) leaves the choice to the world-style student.

A pruned student keeps the teacher's tokenizer, embeddings, final norm, output head and the
chosen decoder layers, renumbered in order; the config's layer count and per-layer lists
(`layer_types`, ...) follow. It is built from the shortened config and given the kept weights
by name, so every config-derived attribute (a layer's index in the KV cache, its attention
type) is the one a checkpoint of that depth would have.
"""

import hashlib
import json
import math
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from jinja2 import TemplateError
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from polydistill.config.student_init import Prune, StudentInit
from polydistill.errors import UserError
from polydistill.teachers.checkpoint import (
    checked_tokenizer,
    checkpoint_source,
    load_checkpoint,
    load_tokenizer,
)
from polydistill.teachers.local import weights_hash
from polydistill.teachers.protocol import text_hash, tokenizer_fingerprint

# Per-layer config entries that list layer *indices* rather than one value per layer.
_INDEX_LISTS = ("mlp_only_layers",)


def init_student(
    init: StudentInit, seed: int, dtype: torch.dtype
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict]:
    """The student's first model and tokenizer, and a description of where they came from."""
    if init.checkpoint is not None:
        model, tokenizer, record = _from_checkpoint(init.checkpoint, init.template, dtype)
    elif init.prune is not None:
        model, tokenizer, record = _from_pruned_teacher(init.prune, init.template, dtype)
    else:
        model, tokenizer, record = _from_config(init, seed, dtype)
    model.eval()
    chat = bool(getattr(tokenizer, "chat_template", None))
    record |= {
        "style": "chat" if chat else "completion",
        "template": init.template,
        "end_of_turn": end_of_turn(tokenizer) if chat else None,
        "hashes": {**record.get("hashes", {}), **tokenizer_fingerprint(tokenizer)},
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(dtype).removeprefix("torch."),
    }
    if not chat:
        record["hashes"].pop("chat_template")
    return model, tokenizer, record


@dataclass(frozen=True)
class CheckpointStudent:
    """`student.init` as the run's `StudentSource` (`inputs.StudentSource`): the tokenizer read
    without the weights, the model built afresh for each trained model, the identity a hash of
    the init and of the files it reads (weights, config), so a changed checkpoint retrains."""

    init: StudentInit

    @cached_property
    def identity(self) -> str:
        digest = hashlib.sha256(self.init.model_dump_json().encode())
        digest.update(json.dumps(_file_hashes(self.init), sort_keys=True).encode())
        return f"init-{digest.hexdigest()[:16]}"

    def tokenizer(self) -> PreTrainedTokenizerBase:
        init = self.init
        if init.config is not None and init.tokenizer is not None:
            who = f"student tokenizer {init.tokenizer}"
            tokenizer = _tokenizer_only(init.tokenizer, who, init.template)
        else:
            path = init.checkpoint or init.prune.teacher_path  # the validator's promise
            _require(path, "student checkpoint")
            tokenizer = load_tokenizer(path, f"student checkpoint {path}", init.template)
        return answers_end_at_turn_end(tokenizer)

    def model(self, seed: int) -> PreTrainedModel:
        model, _, _ = init_student(self.init, seed, torch.float32)
        return model

    def max_positions(self) -> int:
        init = self.init
        if init.config is not None:
            config_file = init.config / "config.json" if init.config.is_dir() else init.config
            config = AutoConfig.from_pretrained(config_file)
        else:
            path = init.checkpoint or init.prune.teacher_path
            folder, extra = checkpoint_source(path, f"student checkpoint {path}")
            config = AutoConfig.from_pretrained(folder, **extra)
        config = getattr(config, "text_config", None) or config
        positions = getattr(config, "max_position_embeddings", None)
        if not isinstance(positions, int):
            raise UserError(
                f"student init: {type(config).__name__} states no max_position_embeddings"
            )
        return positions


def _file_hashes(init: StudentInit) -> dict[str, str]:
    if init.config is not None:
        config_file = init.config / "config.json" if init.config.is_dir() else init.config
        _require(config_file, "student config")
        return {"config": text_hash(config_file.read_text(encoding="utf-8"))}
    path = init.checkpoint or init.prune.teacher_path
    _require(path, "student checkpoint")
    return {"weights": weights_hash(path)}


def answers_end_at_turn_end(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """A chat tokenizer whose eos is the token its template closes an answer with (polydistill
    ends every answer with eos: Gemma 3 instruct's eos is `<eos>`, its turns end with
    `<end_of_turn>`); a completion-style one as it is."""
    if getattr(tokenizer, "chat_template", None):
        closing = end_of_turn(tokenizer)
        if closing and closing != tokenizer.eos_token:
            tokenizer.eos_token = closing
    return tokenizer


def end_of_turn(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The token the chat template closes an assistant turn with (Gemma's `<end_of_turn>`,
    ChatML's `<|im_end|>`), which need not be the tokenizer's eos (Gemma 3's is `<eos>`); the
    eos when the template writes no added token after the answer, or cannot render one."""
    mark = "polydistill-answer-end"
    turns = [{"role": "user", "content": "?"}, {"role": "assistant", "content": mark}]
    try:
        text = tokenizer.apply_chat_template(turns, tokenize=False)
    except (TemplateError, ValueError):  # a template may refuse turns it was not written for
        return tokenizer.eos_token
    if mark not in text:
        return tokenizer.eos_token
    added = set(tokenizer.added_tokens_decoder)
    after = tokenizer(text.rsplit(mark, 1)[1], add_special_tokens=False).input_ids
    closing = [i for i in after if i in added]
    return tokenizer.convert_ids_to_tokens(closing[0]) if closing else tokenizer.eos_token


def _from_checkpoint(
    path: Path, template: str | None, dtype: torch.dtype
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict]:
    _require(path, "student checkpoint")
    model, tokenizer = load_checkpoint(path, f"student checkpoint {path}", dtype, template)
    record = {"kind": "checkpoint", "path": str(path), "hashes": {"weights": weights_hash(path)}}
    return model, tokenizer, record


def _from_pruned_teacher(
    prune: Prune, template: str | None, dtype: torch.dtype
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict]:
    path = prune.teacher_path
    _require(path, "student prune.teacher_path")
    teacher, tokenizer = load_checkpoint(
        path, f"student prune.teacher_path {path}", dtype, template
    )
    total = _layer_count(teacher.config, path)
    layers = chosen_layers(prune, total, path)
    model = prune_layers(teacher, layers)
    record = {
        "kind": "prune",
        "path": str(path),
        "hashes": {"weights": weights_hash(path)},
        "teacher_layers": total,
        "layers": layers,
    }
    return model, tokenizer, record


def _from_config(
    init: StudentInit, seed: int, dtype: torch.dtype
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict]:
    assert init.config is not None and init.tokenizer is not None  # the validator's promise
    config_file = init.config / "config.json" if init.config.is_dir() else init.config
    _require(config_file, "student config")
    _require(init.tokenizer, "student tokenizer")
    who = f"student tokenizer {init.tokenizer}"
    tokenizer = _tokenizer_only(init.tokenizer, who, init.template)
    try:
        config = AutoConfig.from_pretrained(config_file)
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"student config {config_file}: {str(error).splitlines()[0]}") from None
    if getattr(config, "vocab_size", None) is None or config.vocab_size < len(tokenizer):
        raise UserError(
            f"student config {config_file}: vocab_size {getattr(config, 'vocab_size', None)} "
            f"is smaller than the tokenizer's {len(tokenizer)} tokens"
        )
    for role in ("bos", "eos", "pad"):
        token_id = getattr(tokenizer, f"{role}_token_id")
        if token_id is not None:
            setattr(config, f"{role}_token_id", token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _from_config_checked(config, dtype, config_file)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    record = {
        "kind": "config",
        "path": str(config_file),
        "tokenizer_path": str(init.tokenizer),
        "seed": seed,
        "hashes": {"config": text_hash(config_file.read_text(encoding="utf-8"))},
    }
    return model, tokenizer, record


def _tokenizer_only(path: Path, who: str, template: str | None) -> PreTrainedTokenizerBase:
    """The tokenizer of a folder that need not hold a model (no config.json), checked as a
    checkpoint's tokenizer is."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        problem = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"{who}: cannot load the tokenizer: {problem}") from None
    return checked_tokenizer(tokenizer, who, template)


def _from_config_checked(config: Any, dtype: torch.dtype, where: Path) -> PreTrainedModel:
    try:
        return AutoModelForCausalLM.from_config(config, dtype=dtype)
    except ValueError as error:
        raise UserError(
            f"student config {where}: no causal LM for model_type "
            f"{getattr(config, 'model_type', None)!r} ({str(error).splitlines()[0]})"
        ) from None


def _require(path: Path, what: str) -> None:
    if not path.exists():
        raise UserError(f"{what}: no such file or folder: {path}")


# ---- depth pruning ---------------------------------------------------------------------------


def _layer_count(config: Any, path: Path) -> int:
    total = getattr(config, "num_hidden_layers", None)
    if not isinstance(total, int):
        raise UserError(
            f"student prune.teacher_path {path}: architecture {type(config).__name__} has no "
            "num_hidden_layers; depth pruning takes decoder-only causal LMs"
        )
    return total


def chosen_layers(prune: Prune, total: int, path: Path) -> list[int]:
    """The kept layer indices, increasing: the given ones, or `keep` evenly spaced over
    `total` layers with the first and the last among them."""
    if prune.layers is not None:
        outside = [i for i in prune.layers if i >= total]
        if outside:
            raise UserError(
                f"student prune.layers: {outside} out of range; {path} has layers 0..{total - 1}"
            )
        return sorted(prune.layers)
    keep = prune.keep
    if keep is None or keep > total:
        raise UserError(f"student prune.keep: {keep} is more than the {total} layers of {path}")
    # floor(x + 0.5) rather than round(): banker's rounding could give two equal indices.
    return [math.floor(i * (total - 1) / (keep - 1) + 0.5) for i in range(keep)]


def _layer_stack(model: PreTrainedModel) -> str:
    """The state-dict prefix of the decoder layers (`model.layers` in Llama-like models)."""
    total = model.config.num_hidden_layers
    stacks = [
        name
        for name, module in model.named_modules()
        if name.endswith("layers") and isinstance(module, torch.nn.ModuleList)
        and len(module) == total
    ]  # fmt: skip
    if len(stacks) != 1:
        raise UserError(
            f"depth pruning: architecture {type(model).__name__} is unknown (found "
            f"{len(stacks)} stacks of {total} decoder layers, expected one)"
        )
    return stacks[0]


def pruned_config(config: Any, layers: list[int]) -> Any:
    """A copy of `config` for the kept `layers`: layer count, per-layer lists and index lists."""
    total = config.num_hidden_layers
    data = config.to_dict()
    for key, value in data.items():
        if isinstance(value, list) and len(value) == total and key not in _INDEX_LISTS:
            data[key] = [value[i] for i in layers]
    for key in _INDEX_LISTS:
        if isinstance(data.get(key), list):
            data[key] = [layers.index(i) for i in data[key] if i in layers]
    data["num_hidden_layers"] = len(layers)
    return type(config).from_dict(data)


def prune_layers(model: PreTrainedModel, layers: list[int]) -> PreTrainedModel:
    """A new model with `model`'s weights and only its decoder `layers` (in that order)."""
    stack = _layer_stack(model)
    renumber = {old: new for new, old in enumerate(layers)}
    pattern = re.compile(rf"^{re.escape(stack)}\.(\d+)\.")
    kept: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        match = pattern.match(name)
        if match is None:
            kept[name] = tensor
        elif int(match.group(1)) in renumber:
            kept[f"{stack}.{renumber[int(match.group(1))]}.{name[match.end() :]}"] = tensor
    config = pruned_config(model.config, layers)
    pruned = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    pruned.load_state_dict(kept, strict=True)
    pruned.generation_config = model.generation_config
    return pruned
