"""Chat templates for teachers whose checkpoint has none (a base model, a GGUF file):
`teachers[].template` names a Jinja file or one of the built-ins below.

The built-ins render the turn markup each family's instruction-tuned models use, so a base
model of that family meets the same tokens it will meet in its instruct sibling's format:
- `gemma`: `<start_of_turn>user ... <end_of_turn>` turns, `model` for the assistant, the
  system message folded into the first user turn (Gemma has no system role);
- `chatml`: `<|im_start|>role ... <|im_end|>` turns (Qwen).
Each honours `add_generation_prompt`, which `chat.render_*` relies on. `completion` removes a
checkpoint's chat template: the model reads prompts as plain text (`chat.completion_style`).
"""

from pathlib import Path

from transformers import PreTrainedTokenizerBase

from polydistill.errors import UserError

GEMMA = (
    "{{ bos_token }}"
    "{%- set system = messages[0]['content'] if messages[0]['role'] == 'system' else '' -%}"
    "{%- for message in messages if message['role'] != 'system' -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' }}"
    "{%- if loop.first and system %}{{ system + '\n\n' }}{% endif -%}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif -%}"
)

CHATML = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif -%}"
)

BUILTIN = {"gemma": GEMMA, "chatml": CHATML}
COMPLETION = "completion"  # not a template: use the checkpoint as a completion model
# The token that closes a turn in each built-in: it becomes the tokenizer's eos, which
# `chat` treats as the end of an answer (a base model's own eos would never close a turn).
END_OF_TURN = {"gemma": "<end_of_turn>", "chatml": "<|im_end|>"}


def apply_template(tokenizer: PreTrainedTokenizerBase, name_or_file: str, who: str) -> None:
    """Give `tokenizer` the chat template (and, for a built-in, its end-of-turn as eos)."""
    if name_or_file == COMPLETION:
        tokenizer.chat_template = None
        return
    tokenizer.chat_template = chat_template(name_or_file)
    end = END_OF_TURN.get(name_or_file)
    if end is None:
        return
    if tokenizer.convert_tokens_to_ids(end) in (None, tokenizer.unk_token_id):
        raise UserError(
            f"{who}: template {name_or_file!r} closes turns with {end}, which the tokenizer "
            "does not have as one token; use a template file written for this tokenizer"
        )
    tokenizer.eos_token = end


def chat_template(name_or_file: str) -> str:
    """The Jinja text of a built-in template or of a template file."""
    if name_or_file in BUILTIN:
        return BUILTIN[name_or_file]
    path = Path(name_or_file)
    if not path.is_file():
        raise UserError(
            f"chat template {name_or_file!r}: neither a built-in "
            f"({', '.join([*BUILTIN, COMPLETION])}) nor a file"
        )
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"chat template {path}: not UTF-8 text") from error
