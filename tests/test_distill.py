"""Distillation from one same-tokenizer world teacher: targets, rows, loss, and `polydistill run`.

The world is the tiny one's settings with a single teacher, `tutor`, that speaks the student's
tokenizer (its own cache key: building it takes seconds).
"""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from polydistill.chat import encode_prompts, pad_right
from polydistill.config import load_config
from polydistill.distill import (
    IGNORE,
    check_same_tokenizer,
    distillation_batches,
    distillation_data,
    distillation_loss,
    final_hidden_states,
    fused_head_weight,
)
from polydistill.errors import UserError
from polydistill.losses import divergence, reference_distill_loss
from polydistill.student import student_data
from polydistill.targets import SparseTargets
from polydistill.teachers import load_checkpoint
from polydistill.train import train
from polydistill.world.architectures import build_model
from polydistill.world.build import build_world
from polydistill.world.domains import Example

TINY = Path(__file__).parent / "tiny.yaml"
SMALL = {"hidden_size": 64, "layers": 1, "heads": 1, "kv_heads": 1, "head_dim": 64}
TUTOR = {
    "name": "tutor",
    "family": "qwen",
    "tokenizer": "student",
    "domains": ["facts"],
    "model": {**SMALL, "intermediate_size": 128},
    "train": {"steps": 20, "batch_size": 8, "lr": 5.0e-3, "warmup_steps": 2},
}
STUDENT = {
    "teacher": "tutor",
    "model": {**SMALL, "intermediate_size": 64},
    "train": {"steps": 4, "batch_size": 8, "lr": 3.0e-3, "warmup_steps": 1},
    "top_k": 8,
    "checkpoint_every": 2,
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Matrices this small run fastest on one thread, above all on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory, tiny_cache) -> Path:
    raw = yaml.safe_load(TINY.read_text())
    raw["world"]["cache_dir"] = str(tiny_cache)
    raw["threads"] = 1  # the world's one teacher trains on one thread, like these tests
    raw["teachers"] = [TUTOR]
    raw["student"] = STUDENT
    path = tmp_path_factory.mktemp("distill") / "tutor.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def cfg(config_file):
    return load_config(config_file)


@pytest.fixture(scope="module")
def world(cfg):
    return build_world(cfg)


@pytest.fixture(scope="module")
def tutor(world):
    return load_checkpoint(world.teachers["tutor"], "tutor")


@pytest.fixture(scope="module")
def data(cfg, world):
    return student_data(cfg, world)


def test_targets_equal_a_dense_float64_recomputation(tutor):
    teacher, tokenizer = tutor
    prompts = encode_prompts(tokenizer, ["Where does Mo Ka live?", "1+2", "What is it?"], "t")
    temperature, k = 1.7, 5
    data = distillation_data(
        teacher, tokenizer, prompts, top_k=k, temperature=temperature, max_new_tokens=6,
        batch_size=2, samples=2, seed=3,
    )  # fmt: skip
    assert len(data) == 6 and data.offsets[-1] == len(data.targets)
    dense_teacher = teacher.to(torch.float64)
    try:
        for r in range(len(data)):
            prompt, completion = data.prompts[r], data.completions[r]
            assert prompt == prompts[r % 3]
            assert completion[-1] == tokenizer.eos_token_id or len(completion) == 6
            ids = torch.tensor([prompt + completion])
            with torch.no_grad():
                logits = dense_teacher(input_ids=ids).logits[0]
            rows = logits[len(prompt) - 1 : len(prompt) - 1 + len(completion)]
            if r < 3:  # the greedy completion is the argmax at every step
                assert rows.argmax(-1).tolist() == completion
            dense = torch.log_softmax(rows / temperature, dim=-1)
            span = slice(data.offsets[r], data.offsets[r + 1])
            got_ids, got = data.targets.ids[span], data.targets.logprobs[span].double()
            top, top_ids = dense.topk(k, dim=-1)
            assert torch.equal(got_ids, top_ids)
            torch.testing.assert_close(got, top, rtol=0, atol=2e-5)
            torch.testing.assert_close(dense.gather(1, got_ids), got, rtol=0, atol=2e-5)
            tail = data.targets.tail[span].double()
            torch.testing.assert_close(tail, 1 - top.exp().sum(-1), rtol=0, atol=1e-5)
            torch.testing.assert_close(
                got.exp().sum(-1) + tail, torch.ones(len(completion), dtype=torch.float64)
            )
    finally:
        teacher.to(torch.float32)


def test_sampled_completions_differ_from_greedy_and_are_seeded(tutor):
    teacher, tokenizer = tutor
    prompts = encode_prompts(tokenizer, [f"Where does Mo Ka{i} live?" for i in range(8)], "t")
    args = dict(top_k=4, temperature=1.0, max_new_tokens=6, batch_size=8, samples=2)
    first = distillation_data(teacher, tokenizer, prompts, seed=5, **args)
    again = distillation_data(teacher, tokenizer, prompts, seed=5, **args)
    assert first.completions == again.completions
    assert first.completions[:8] != first.completions[8:]


def test_student_rows_never_see_gold_answers(cfg, world, data):
    def garbled(split: dict[str, list[Example]]) -> dict[str, list[Example]]:
        return {
            d: [Example(e.domain, e.prompt, f"#{i}?") for i, e in enumerate(examples)]
            for d, examples in split.items()
        }

    fake = dataclasses.replace(world, train=garbled(world.train), heldout=garbled(world.heldout))
    rows, tokenizer = data
    again, _ = student_data(cfg, fake)
    assert again.prompts == rows.prompts and again.completions == rows.completions
    assert again.offsets == rows.offsets
    for name in ("ids", "logprobs", "tail", "mask"):
        assert torch.equal(getattr(again.targets, name), getattr(rows.targets, name))
    facts = world.train["facts"]
    assert len(rows) == len(facts)
    assert rows.prompts == encode_prompts(tokenizer, [e.prompt for e in facts], "t")


def test_loss_fn_equals_the_dense_reference_on_a_batch(data):
    rows, tokenizer = data
    batch = distillation_batches(rows, tokenizer.pad_token_id, 5, seed=1)(3)
    student = build_model("qwen", load_config(TINY).teachers[2].model, tokenizer, 0).double()
    loss_fn = distillation_loss("jsd", 0.3, 1.5, 0.25, len(tokenizer))
    out = loss_fn(student, batch)
    labels = batch["labels"][:, 1:]
    counted = labels != IGNORE
    logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = SparseTargets(
        batch["target_ids"], batch["target_logprobs"].double(), batch["target_tail"].double(),
        torch.ones(int(counted.sum()), dtype=torch.bool),
    )  # fmt: skip
    expected = reference_distill_loss(
        logits[:, :-1][counted], targets, "jsd", beta=0.3, temperature=1.5, ce_weight=0.25,
        labels=labels[counted], reduction="sum",
    )  # fmt: skip
    assert out.tokens == int(counted.sum()) == len(batch["target_ids"])
    torch.testing.assert_close(out.loss_sum, expected, rtol=1e-9, atol=0)
    assert set(out.parts) == {"divergence", "cross_entropy"}


def full_vocabulary_kl(student, teacher, rows, pad_id: int) -> float:
    """Token-mean KL(teacher ‖ student) over every completion position, on full logits."""
    input_ids, attention_mask = pad_right(
        [p + c for p, c in zip(rows.prompts, rows.completions, strict=True)], pad_id
    )
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    for r, (p, c) in enumerate(zip(rows.prompts, rows.completions, strict=True)):
        mask[r, len(p) - 1 : len(p) - 1 + len(c)] = True
    with torch.no_grad():
        s = student(input_ids=input_ids, attention_mask=attention_mask).logits
        t = teacher(input_ids=input_ids, attention_mask=attention_mask).logits
    return float(divergence(s, t, "forward_kl", mask=mask))


def test_distillation_reduces_the_divergence_to_the_teacher(cfg, tutor, data):
    rows, tokenizer = data
    student = build_model("qwen", cfg.student.model, tokenizer, 0)
    before = full_vocabulary_kl(student, tutor[0], rows, tokenizer.pad_token_id)
    records = train(
        student,
        distillation_batches(rows, tokenizer.pad_token_id, 16, seed=0),
        distillation_loss("forward_kl", 0.5, 1.0, 0.0, len(tokenizer)),
        steps=40,
        lr=3e-3,
        warmup_steps=4,
    )
    after = full_vocabulary_kl(student, tutor[0], rows, tokenizer.pad_token_id)
    assert after < 0.5 * before
    assert records[-1]["divergence"] < 0.5 * records[0]["divergence"]


@pytest.mark.parametrize("family", ["qwen", "gemma", "gpt-oss"])
def test_final_hidden_states_times_the_head_are_the_logits(family, data):
    _, tokenizer = data
    size = load_config(TINY).teachers[1].model  # has experts for gpt-oss
    model = build_model(family, size, tokenizer, 0).eval()
    ids = torch.tensor([[1, 5, 9, 13, 2, 0], [1, 7, 3, 0, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        hidden = final_hidden_states(model, ids, mask)
        logits = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(hidden @ fused_head_weight(model).T, logits)


def test_a_soft_capped_student_is_refused():
    config = AutoConfig.for_model(
        "gemma3_text", vocab_size=32, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=1, num_key_value_heads=1, head_dim=16, final_logit_softcapping=30.0,
    )  # fmt: skip
    with pytest.raises(UserError, match="final_logit_softcapping"):
        fused_head_weight(AutoModelForCausalLM.from_config(config))


def test_a_different_tokenizer_is_refused(world, data):
    _, student_tokenizer = data
    qwen = AutoTokenizer.from_pretrained(world.tokenizer_dir("qwen"))
    with pytest.raises(UserError, match=r"^teacher 'x': .*alignment path \(polydistill\.align"):
        check_same_tokenizer(qwen, student_tokenizer, "teacher 'x'")
    check_same_tokenizer(student_tokenizer, student_tokenizer, "teacher 'x'")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["student.teacher=nobody"], "student.teacher: no teacher named 'nobody' (teachers: tut"),
        (
            ["teachers[0].tokenizer=qwen"],
            "student.teacher: teacher 'tutor' uses the qwen tokenizer and the student the "
            "student one; cross-tokenizer distillation needs the alignment path",
        ),
        (["student.loss=kl"], "student.loss: Input should be"),
        (["student.top_k=0"], "student.top_k: Input should be greater than 0"),
        (["student.domains=[poetry]"], "student.domains[0]: Input should be"),
    ],
)
def test_bad_student_config_is_one_line(config_file, overrides, message):
    with pytest.raises(UserError) as error:
        load_config(config_file, overrides)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.slow
def test_run_distils_the_student_and_resumes_after_a_crash(
    cfg, world, tmp_path, monkeypatch, capsys
):
    """`polydistill run` (the pipeline it calls): killed after training, run again, it resumes
    from the finished checkpoint; the student joins metrics.json and loads as a checkpoint."""
    import polydistill.pipeline as pipeline

    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"heldout_limit": 3})})
    out = tmp_path / "out"
    evaluate = pipeline.evaluate_with_progress

    def crash_on_the_student(bars, label, *rest):
        if label == "student":
            raise KeyboardInterrupt
        return evaluate(bars, label, *rest)

    monkeypatch.setattr(pipeline, "evaluate_with_progress", crash_on_the_student)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(cfg, out)
    assert not out.exists()
    (work,) = [p for p in tmp_path.iterdir() if ".student-" in p.name]
    assert (work / "checkpoints" / "step-00000004").is_dir()
    monkeypatch.setattr(pipeline, "evaluate_with_progress", evaluate)
    capsys.readouterr()

    metrics = pipeline.run(cfg, out)
    assert "student: resuming from" in capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text()) == metrics
    student, teacher = metrics["models"]["student"], metrics["models"]["teacher:tutor"]
    assert set(student) == set(teacher) == {"accuracy", "bits_per_byte", "params"}
    assert set(student["accuracy"]) == set(metrics["domains"])
    assert all(math.isfinite(b) and b > 0 for b in student["bits_per_byte"].values())
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    model = AutoModelForCausalLM.from_pretrained(out / "student")
    tokenizer = AutoTokenizer.from_pretrained(out / "student")
    assert type(model).__name__ == "Qwen3ForCausalLM" and tokenizer.chat_template
    assert sum(p.numel() for p in model.parameters()) == student["params"]
