"""The student as a standard checkpoint (`student_export`): what `AutoModelForCausalLM` and
`AutoTokenizer` read back gives the same logits, the same greedy generation (stopping at the
end-of-turn that `generation_config.json` names) and the same chat rendering."""

import json

import pytest
import torch
from student_models import PROMPT, tiny_model, tiny_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from polydistill.errors import UserError
from polydistill.serve.core.served_model import load_served_model
from polydistill.student.export import export_student

MESSAGES = [{"role": "user", "content": "Where does the river go?"}]


@pytest.fixture
def student():
    tokenizer = tiny_tokenizer()
    # The tokenizer's eos is not the end of a turn: only generation_config can say where
    # an answer stops.
    tokenizer.eos_token = "<|endoftext|>"
    return tiny_model("qwen3", len(tokenizer)), tokenizer


def test_the_export_loads_back_as_the_same_model(student, tmp_path):
    model, tokenizer = student
    out = export_student(
        model, tokenizer, tmp_path / "student",
        chat_template=tokenizer.chat_template, end_of_turn="<|im_end|>",
    )  # fmt: skip
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= {
        p.name for p in out.iterdir()
    }
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    loaded_tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    assert torch.equal(loaded_tokenizer(PROMPT, return_tensors="pt").input_ids, ids)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert loaded_tokenizer.chat_template == tokenizer.chat_template
    rendered = loaded_tokenizer.apply_chat_template(
        MESSAGES, add_generation_prompt=True, tokenize=False
    )
    assert rendered.startswith("<|im_start|>user\n")
    assert rendered == tokenizer.apply_chat_template(
        MESSAGES, add_generation_prompt=True, tokenize=False
    )

    end, pad = (tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>"))
    generation = GenerationConfig.from_pretrained(out)
    assert generation.eos_token_id == [end, pad] and generation.pad_token_id == pad
    assert loaded.generation_config.eos_token_id == [end, pad]
    assert loaded.config.eos_token_id == [end, pad]
    assert load_served_model(out).eos_token_ids == {end, pad}  # what `polydistill serve` stops at

    # greedy generation with the saved generation config, pushed to end its turn at once
    # after the prompt: the exported model stops there, as the original given those ids
    with torch.no_grad():
        loaded.lm_head.weight[end] = 0.0
        model.lm_head.weight[end] = 0.0
        boost = loaded.model(ids).last_hidden_state[0, -1]
        loaded.lm_head.weight[end] = boost * 1e3
        model.lm_head.weight[end] = boost * 1e3
    chat_ids = tokenizer(rendered, return_tensors="pt").input_ids
    ours = model.generate(chat_ids, max_new_tokens=12, do_sample=False, eos_token_id=[end, pad])
    theirs = loaded.generate(chat_ids, max_new_tokens=12, do_sample=False)
    assert torch.equal(ours, theirs)
    plain = loaded.generate(ids, max_new_tokens=12, do_sample=False)
    assert plain[0, -1] == end and plain.shape[1] < ids.shape[1] + 12


def test_the_config_states_the_weights_dtype(student, tmp_path):
    model, tokenizer = student
    out = export_student(
        model.to(torch.bfloat16), tokenizer, tmp_path / "bf16",
        chat_template=tokenizer.chat_template, end_of_turn="<|im_end|>",
    )  # fmt: skip
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert loaded.dtype == torch.bfloat16
    assert all(
        torch.equal(a, b) for a, b in zip(loaded.parameters(), model.parameters(), strict=True)
    )


def test_a_completion_student_has_no_template_and_stops_at_eos(student, tmp_path):
    model, tokenizer = student
    model.generation_config.eos_token_id = [7, 10_000]  # 10,000: no id of this vocabulary
    out = export_student(
        model, tokenizer, tmp_path / "completion", chat_template=None, end_of_turn=None
    )
    loaded_tokenizer = AutoTokenizer.from_pretrained(out)
    assert not loaded_tokenizer.chat_template and not (out / "chat_template.jinja").exists()
    assert "chat_template" not in json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer.chat_template, "the caller's tokenizer kept its template"
    eos = GenerationConfig.from_pretrained(out).eos_token_id
    assert eos == [tokenizer.convert_tokens_to_ids("<|endoftext|>"), 7]


def test_an_existing_export_is_replaced_whole(student, tmp_path):
    model, tokenizer = student
    out = tmp_path / "student"
    out.mkdir()
    (out / "stale.bin").write_bytes(b"old")
    export_student(model, tokenizer, out, chat_template=None, end_of_turn="<|im_end|>")
    assert not (out / "stale.bin").exists() and (out / "model.safetensors").is_file()


def test_an_end_of_turn_outside_the_vocabulary_is_one_line_and_writes_nothing(student, tmp_path):
    model, tokenizer = student
    with pytest.raises(UserError, match=r"end_of_turn '<end_of_turn>' is not one token"):
        export_student(
            model, tokenizer, tmp_path / "student",
            chat_template=tokenizer.chat_template, end_of_turn="<end_of_turn>",
        )  # fmt: skip
    assert list(tmp_path.iterdir()) == []
