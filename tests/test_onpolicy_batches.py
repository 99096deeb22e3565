"""On-policy batches (`polydistill.onpolicy.batches`): the λ schedule, the buffer and its reuse,
warm start, and an end-to-end run with two teachers of other tokenizers than the student's."""

import pydantic
import pytest
import torch
from align_tokenizers import tokenizer
from onpolicy_models import prompts, teacher, tiny_model

from polydistill.distill import distillation_loss
from polydistill.errors import UserError
from polydistill.losses.reference import reference_distill_loss
from polydistill.onpolicy import (
    Grading,
    OnPolicyConfig,
    graded_rows,
    is_on_policy,
    on_policy_batches,
    sample_answers,
    warm_start,
)
from polydistill.train import train


@pytest.fixture(scope="module")
def teachers():
    return [teacher("qwen-like", "qwen", 1), teacher("gemma-like", "gemma", 2)]


@pytest.fixture(scope="module")
def tok():
    return tokenizer("world-student")


def _config(**changes) -> OnPolicyConfig:
    settings = {"samples_per_prompt": 2, "max_new_tokens": 6, "buffer_prompts": 3, "top_k": 8}
    return OnPolicyConfig(**{**settings, **changes})


def test_the_mix_is_an_exact_evenly_spread_fraction_of_steps():
    for mix, steps in ((0.0, 10), (0.25, 12), (0.5, 10), (1.0, 7), (0.3, 100)):
        chosen = [s for s in range(steps) if is_on_policy(s, mix)]
        assert len(chosen) == int(steps * mix + 1e-9)
    assert [s for s in range(6) if is_on_policy(s, 0.5)] == [1, 3, 5]


def test_mixed_steps_take_off_policy_batches_in_order_and_refresh_per_block(teachers, tok):
    student = tiny_model("student", 0)
    refreshed, asked = [], []

    def off_policy(index):
        asked.append(index)
        return {"off_policy_index": torch.tensor(index)}

    batch_at = on_policy_batches(
        student, tok, teachers, prompts(6), _config(mix=0.5, buffer_steps=4),
        grading=Grading("uniform"), batch_size=2, accumulation_steps=2, off_policy=off_policy,
        on_refresh=lambda block, stats: refreshed.append((block, stats["samples"])),
    )  # fmt: skip
    batches = [batch_at(i) for i in range(16)]  # 8 steps of 2 micro-batches
    assert asked == list(range(8))  # steps 0, 2, 4, 6: the off-policy stream without gaps
    assert [int(batches[i]["off_policy_index"]) for i in (0, 1, 4, 5)] == [0, 1, 2, 3]
    on = [batches[i] for i in (2, 3, 6, 7, 10, 11, 14, 15)]
    assert all("target_ids" in b and b["target_ids"].shape[1] == 9 for b in on)
    assert refreshed == [(0, 6), (1, 6)]  # steps 1 and 3 share block 0, steps 5 and 7 block 1
    with pytest.raises(UserError, match=r"mix is 0\.5: the other steps need off-policy batches"):
        on_policy_batches(student, tok, teachers, prompts(6), _config(mix=0.5),
                          grading=Grading(), batch_size=2)  # fmt: skip


def test_a_saved_buffer_is_read_back_instead_of_regenerated(teachers, tok, tmp_path):
    refreshed = []

    def batches(seed):
        return on_policy_batches(
            tiny_model("student", seed), tok, teachers, prompts(6), _config(buffer_steps=3),
            grading=Grading("evidence", 0.5), batch_size=3, buffer_dir=tmp_path,
            on_refresh=lambda block, stats: refreshed.append(block),
        )  # fmt: skip

    first = batches(0)(2)
    assert refreshed == [0] and (tmp_path / "buffer-000000.pt").is_file()
    resumed = batches(1)(2)  # other weights: a regenerated buffer would differ
    assert refreshed == [0]
    assert first.keys() == resumed.keys()
    assert all(torch.equal(first[k], resumed[k]) for k in first)


def _same_weights(a, b) -> bool:
    mine, theirs = a.state_dict(), b.state_dict()
    return mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_warm_start_loads_a_checkpoint_exactly(tmp_path):
    saved = tiny_model("student", 4)
    saved.save_pretrained(tmp_path / "step-00000010")
    student = tiny_model("student", 5)
    warm_start(student, tmp_path / "step-00000010")
    for (name, a), (_, b) in zip(
        saved.state_dict().items(), student.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    with pytest.raises(UserError, match=r"holds no model\.safetensors"):
        warm_start(student, tmp_path)


def test_config_fields_are_checked():
    with pytest.raises(pydantic.ValidationError, match="mix"):
        OnPolicyConfig(mix=1.5)
    with pytest.raises(pydantic.ValidationError, match="extra"):
        OnPolicyConfig(lambda_=0.5)


def _own_sample_reverse_kl(student, tok, teachers, asked) -> float:
    """Mean per-token reverse KL to the fused teachers on fresh samples of the student."""
    drawn = sample_answers(
        student, tok, asked, prompt_ids=list(range(len(asked))), samples=2, temperature=1.0,
        max_new_tokens=6, seed=99, refresh=0, batch_size=16,
    )  # fmt: skip
    data, _ = graded_rows(drawn, teachers, tok, asked, Grading("evidence", 0.5), top_k=8)
    with torch.no_grad():
        logits = [
            student(input_ids=torch.tensor([r.prompt_ids + r.answer_ids])).logits[
                0, len(r.prompt_ids) - 1 : -1
            ]
            for r in drawn.rows
        ]
    return float(reference_distill_loss(torch.cat(logits), data.targets, "reverse_kl"))


def _distil(teachers, tok, seed: int):
    student = tiny_model("student", 0)
    asked = prompts(8)
    before = _own_sample_reverse_kl(student, tok, teachers, asked)
    batch_at = on_policy_batches(
        student, tok, teachers, asked, _config(buffer_steps=2, buffer_prompts=4, seed=seed),
        grading=Grading("evidence", 0.5), batch_size=8,
    )  # fmt: skip
    loss = distillation_loss("reverse_kl", 0.5, 1.0, 0.0, len(tok))
    records = train(student, batch_at, loss, steps=8, lr=2e-2, seed=seed)
    return student, before, _own_sample_reverse_kl(student, tok, teachers, asked), records


def test_on_policy_steps_reduce_reverse_kl_on_own_samples_reproducibly(teachers, tok):
    student, before, after, records = _distil(teachers, tok, seed=0)
    print(f"reverse KL on own samples: {before:.4f} -> {after:.4f}")
    assert after < 0.7 * before, (before, after, [r["loss"] for r in records])
    again, _, _, _ = _distil(teachers, tok, seed=0)
    for (name, a), (_, b) in zip(
        student.state_dict().items(), again.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
