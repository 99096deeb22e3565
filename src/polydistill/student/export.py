"""The trained student as a standard checkpoint that transformers, vLLM and `polydistill serve`
load as they load any Hugging Face model.

    export_student(model, tokenizer, run_dir / "student",
                   chat_template=tokenizer.chat_template, end_of_turn="<|im_end|>")

The folder holds `config.json` (its `dtype` the weights' dtype), `model.safetensors`, the
tokenizer files, the chat template when the student has one (a completion-style student has
none), and `generation_config.json` whose `eos_token_id` lists the end-of-turn token first,
then the tokenizer's eos, then any ids the model's generation config already lists; config.json
lists the same. A server that reads them (vLLM reads the generation config, `polydistill serve`
the config) stops an answer where a turn ends even when the tokenizer's own eos is another
token. The folder is written whole or not at all (`staging.staged_folder`); an existing one is
replaced only once the new one is complete.
"""

import copy
import json
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from polydistill.errors import UserError
from polydistill.staging import staged_folder
from polydistill.train.checkpoint import save_model_quietly


def token_id(tokenizer: PreTrainedTokenizerBase, token: str, what: str) -> int:
    """The id of `token`, which must be one token of the vocabulary."""
    found = tokenizer.convert_tokens_to_ids(token)
    if found is None or (found == tokenizer.unk_token_id and token != tokenizer.unk_token):
        raise UserError(f"student {what} {token!r} is not one token of the student's vocabulary")
    return found


def end_token_ids(
    tokenizer: PreTrainedTokenizerBase, end_of_turn: str | None, known: object = None
) -> list[int]:
    """The ids that end an answer: the end-of-turn token, the tokenizer's eos, then the ids
    `known` already lists (a checkpoint's own generation config: Llama 3's several)."""
    ids = [] if end_of_turn is None else [token_id(tokenizer, end_of_turn, "end_of_turn")]
    listed = known if isinstance(known, list) else [known]
    for candidate in [tokenizer.eos_token_id, *listed]:
        if isinstance(candidate, int) and 0 <= candidate < len(tokenizer) and candidate not in ids:
            ids.append(candidate)
    if not ids:
        raise UserError("student: neither an end_of_turn token nor a tokenizer eos to stop at")
    return ids


def export_student(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: Path,
    *,
    chat_template: str | None,
    end_of_turn: str | None,
) -> Path:
    """Write `model` and `tokenizer` to `out_dir` as a standard checkpoint (see the module
    docstring); `chat_template` None makes a completion-style checkpoint. Returns `out_dir`."""
    eos_ids = end_token_ids(tokenizer, end_of_turn, model.generation_config.eos_token_id)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[-1]
    # A shallow copy: the caller's tokenizer keeps its template, the vocabulary is not copied.
    saved_tokenizer = copy.copy(tokenizer)
    saved_tokenizer.chat_template = chat_template
    generation = copy.deepcopy(model.generation_config)
    generation.eos_token_id = eos_ids if len(eos_ids) > 1 else eos_ids[0]
    generation.pad_token_id = pad_id
    if tokenizer.bos_token_id is not None:
        generation.bos_token_id = tokenizer.bos_token_id
    with staged_folder(Path(out_dir), replace=True) as staging:
        save_model_quietly(model, staging)
        config = json.loads((staging / "config.json").read_text())
        config["eos_token_id"] = generation.eos_token_id
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        saved_tokenizer.save_pretrained(staging)
        # after the model: `save_pretrained` writes the model's own generation config first
        generation.save_pretrained(staging)
    return Path(out_dir)
