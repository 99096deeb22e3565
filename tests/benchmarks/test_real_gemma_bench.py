"""The pure parts of `benchmarks.real_gemma`: the GPL-3 cut into prompts, and the teacher-match
figures (KL on the teacher's continuations, log-ratio per byte, greedy agreement) against
dense float64 references computed position by position on tiny models, with one tokenizer and
across two."""

import copy
import json
import math

import numpy as np
import pytest
import torch
from repo_paths import ROOT
from student_models import CORPUS, tiny_model

from benchmarks import gpl_prompts, teacher_match
from polydistill.align.tokenbytes import vocab_bytes
from polydistill.world.tokenizers import train_tokenizer

PROMPTS = ["Where does the river go", "The quick brown fox", "Numbers like 12 and 345"]


def test_the_gpl_is_cut_into_sentences_and_their_continuations(tmp_path):
    text = gpl_prompts.DEFAULT_TEXT.read_text()
    rows = gpl_prompts.pairs(text)
    assert len(rows) > 100 and {r["tag"] for r in rows} == {"preamble", "terms", "howto"}
    prose = " ".join(p for _, p in gpl_prompts.parts(text))
    for row in rows:
        words = row["reference"].split()
        assert len(words) == gpl_prompts.REFERENCE_WORDS + 1  # the mark, then the words
        assert row["reference"][0] in ".?!\"')" and not row["prompt"].endswith(" ")
        assert row["prompt"] + row["reference"] in prose  # the text's own continuation
    assert rows[0]["prompt"].startswith("The GNU General Public License is a free, copyleft")
    out = tmp_path / "p.jsonl"
    assert gpl_prompts.write(out) == len(rows)
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows
    with pytest.raises(ValueError, match="Preamble"):
        gpl_prompts.parts("no headings here")


def test_token_kl_is_the_dense_float64_sum():
    gen = torch.Generator().manual_seed(0)
    t, m = torch.randn(5, 11, generator=gen), torch.randn(5, 11, generator=gen)
    got = teacher_match.token_kl(t, m)
    for row in range(5):
        p = [math.exp(x) for x in t[row].double().tolist()]
        q = [math.exp(x) for x in m[row].double().tolist()]
        p, q = [x / sum(p) for x in p], [x / sum(q) for x in q]
        want = sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))
        assert got[row].item() == pytest.approx(want, rel=1e-12) and want > 0.01
    assert torch.allclose(teacher_match.token_kl(t, t), torch.zeros(5, dtype=torch.float64))


def test_agreement_and_common_prefix():
    assert teacher_match.common_prefix(b"abcdef", b"abcxyz") == 3
    assert teacher_match.agrees(b"abc", b"abcdef") and not teacher_match.agrees(b"abcdef", b"abc")
    assert teacher_match.agrees(b"a" * 30 + b"x", b"a" * 30 + b"y")  # only the first 24 bytes


def _completion(style: str, vocab: int):
    tokenizer = copy.deepcopy(train_tokenizer(style, CORPUS, vocab))
    tokenizer.chat_template = None
    return tokenizer


@pytest.fixture(scope="module")
def tiny():
    teacher_tok, other_tok = _completion("qwen", 400), _completion("gemma", 420)
    assert vocab_bytes(teacher_tok, "t").digest != vocab_bytes(other_tok, "o").digest
    teacher = tiny_model("qwen3", len(teacher_tok), seed=1)
    # a random model may end at once; text continuations make the test measure something
    specials = vocab_bytes(teacher_tok, "t").is_special
    teacher.generation_config.suppress_tokens = np.nonzero(specials)[0].tolist()
    return {
        "teacher": (teacher, teacher_tok),
        "same": (tiny_model("qwen3", len(teacher_tok), seed=2), teacher_tok),
        "other": (tiny_model("qwen3", len(other_tok), seed=3), other_tok),
    }


def _dense(teacher, t_tok, model, m_tok, prompt):
    """Position by position in float64, from the logits of whole sequences."""
    t_vocab, m_vocab = vocab_bytes(t_tok, "t"), vocab_bytes(m_tok, "m")
    t_prompt = t_tok(prompt)["input_ids"]
    out = teacher.generate(torch.tensor([t_prompt]), max_new_tokens=6, do_sample=False)
    t_cont, text = teacher_match._text_bytes(t_vocab, out[0, len(t_prompt) :].tolist())
    m_prompt = m_tok(prompt)["input_ids"]
    same = t_tok is m_tok
    m_cont = t_cont if same else m_tok(text.decode(), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        t_log = torch.log_softmax(teacher(torch.tensor([t_prompt + t_cont])).logits[0].double(), -1)
        m_log = torch.log_softmax(model(torch.tensor([m_prompt + m_cont])).logits[0].double(), -1)
    ratio = sum(t_log[len(t_prompt) + i - 1, t].item() for i, t in enumerate(t_cont))
    ratio -= sum(m_log[len(m_prompt) + i - 1, t].item() for i, t in enumerate(m_cont))
    kls = []
    t_pos = np.cumsum([0] + [len(t_vocab.token_bytes[i]) for i in t_cont])
    m_pos = np.cumsum([0] + [len(m_vocab.token_bytes[i]) for i in m_cont])
    for i, start in enumerate(t_pos[:-1]):
        j = np.nonzero(m_pos[:-1] == start)[0]
        if len(j) == 0 or (not same and m_pos[j[0] + 1] != t_pos[i + 1]):
            continue  # only where both start a token and the piece is one token on both
        t_row, m_row = t_log[len(t_prompt) + i - 1], m_log[len(m_prompt) + j[0] - 1]
        if same:
            p, q = t_row.exp().tolist(), m_row.exp().tolist()
        else:
            spelled = {
                b: k for k, b in enumerate(m_vocab.token_bytes) if b and not m_vocab.is_special[k]
            }
            pairs = [(k, spelled[b]) for k, b in enumerate(t_vocab.token_bytes)
                     if b in spelled and not t_vocab.is_special[k]]  # fmt: skip
            p = [math.exp(t_row[a].item()) for a, _ in pairs]
            q = [math.exp(m_row[b].item()) for _, b in pairs]
            p, q = [x / sum(p) for x in p], [x / sum(q) for x in q]
        kls.append(sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0))
    return kls, ratio / len(text) if text else None


@pytest.mark.parametrize("which", ["same", "other"])
def test_match_against_a_dense_reference(tiny, which):
    teacher, t_tok = tiny["teacher"]
    model, m_tok = tiny[which]
    found = teacher_match.match(teacher, t_tok, model, m_tok, PROMPTS, new_tokens=6)
    kls, ratios = [], []
    for prompt in PROMPTS:
        k, r = _dense(teacher, t_tok, model, m_tok, prompt)
        kls += k
        ratios.append(r)
    assert found["kl_positions"] == len(kls) > 0
    assert found["kl_per_token"] == pytest.approx(sum(kls) / len(kls), rel=1e-6)
    assert found["kl_per_token"] > 0.01  # a different model: not compared with itself
    assert found["kl_method"] == ("full vocabulary" if which == "same" else
                                 "1:1 chunks, shared token strings")  # fmt: skip
    assert ratios and found["log_ratio_per_byte"] != 0


def test_the_teacher_against_itself_is_zero_and_agrees(tiny):
    teacher, t_tok = tiny["teacher"]
    found = teacher_match.match(teacher, t_tok, teacher, t_tok, PROMPTS, new_tokens=6)
    assert found["kl_per_token"] == pytest.approx(0.0, abs=1e-9)
    assert found["log_ratio_per_byte"] == pytest.approx(0.0, abs=1e-6)
    assert found["agreement"] == 1.0


def test_a_completion_model_reads_a_one_turn_prompt_as_its_text():
    from polydistill.data.records import PromptRecord, Turn
    from polydistill.errors import UserError
    from polydistill.evaluate.prompts import encode_records

    tokenizer = _completion("gemma", 420)
    one = PromptRecord("0" * 16, "test", "prompt", messages=(Turn("user", "The quick fox"),))
    text = PromptRecord("1" * 16, "test", "text", text="The quick fox")
    ids = encode_records(tokenizer, [one, text], "model")
    assert ids[0] == ids[1] == tokenizer("The quick fox")["input_ids"]
    two = PromptRecord(
        "2" * 16,
        "test",
        "messages",
        messages=(Turn("system", "Be brief."), Turn("user", "Hi")),
        origin="chats.jsonl line 2",
    )
    with pytest.raises(UserError, match=r"^model: chats.jsonl line 2 is a conversation "):
        encode_records(tokenizer, [one, two], "model")


@pytest.mark.parametrize("example", ["real-gemma.yaml", "real-gemma-qwen.yaml"])
def test_the_examples_load_and_a_worker_revalidates_them(example, tmp_path):
    """Both examples load with stand-ins for what `make real-gemma` prepares in .cache/ (so
    test_config leaves them to this test), and the spawned workers of a run with
    `student.init` and baselines re-read its config: the fields it sets, never every default
    (`student.family` beside `init` is refused)."""
    from pydantic import ValidationError

    from polydistill.config import RunConfig, load_config
    from polydistill.student.workers import worker_config

    (tmp_path / "gpl3.jsonl").write_text('{"prompt": "a", "reference": "b"}\n')
    (tmp_path / "gemma-3-270m-q4_k_m.gguf").write_bytes(b"GGUF")
    (tmp_path / "qwen-student").mkdir()
    (tmp_path / "qwen-student" / "config.json").write_text("{}")
    text = (ROOT / "examples" / example).read_text()
    assert ".cache/real-gemma/" in text
    (tmp_path / "run.yaml").write_text(text.replace(".cache/real-gemma/", f"{tmp_path}/"))
    cfg = load_config(tmp_path / "run.yaml")
    assert cfg.student.init is not None and cfg.benchmark.baselines == ["seqkd", "oracle"]
    assert cfg.benchmark.keep_models
    assert RunConfig.model_validate(worker_config(cfg)) == cfg
    with pytest.raises(ValidationError, match="init decides"):
        RunConfig.model_validate(cfg.model_dump(mode="json"))
