"""`polydistill run` with `student.on_policy`: the student mixes its own graded samples into its
off-policy batches, in a worker process or in this one, with the same weights either way and
after a crash inside a buffer block; a store cannot grade samples.

The tiny world (tests/tiny.yaml) with two of its teachers of other tokenizers than the student's
(gemma, qwen); six steps at mix 0.5 with a buffer of four steps: on-policy steps 2, 4, 6
(1-based), refreshed at steps 2 and 6, so a run killed after the checkpoint of step 2 resumes
inside the first block and must read its rows back from the work folder.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import polydistill.pipeline as pipeline
from polydistill.config import load_config
from polydistill.config.on_policy import OnPolicyConfig
from polydistill.errors import UserError
from polydistill.student import workers
from polydistill.student.on_policy import grading_teachers, mixed_batches
from polydistill.student.plans import ModelPlan, model_plans, model_work_dir, trains_on_policy
from polydistill.student.prompts import Prompts
from polydistill.teachers.local import LocalTeacher
from polydistill.world.inputs import world_inputs

TINY = Path(__file__).parents[1] / "tiny.yaml"
SMALL = {"hidden_size": 32, "layers": 1, "heads": 1, "kv_heads": 1, "head_dim": 32}
ON_POLICY = {
    "mix": 0.5,
    "buffer_steps": 4,
    "buffer_prompts": 3,
    "samples_per_prompt": 2,
    "max_new_tokens": 6,
    "top_k": 8,
    "generation_batch_size": 4,
}
STUDENT = {
    "teachers": ["gemma", "qwen"],
    "model": {**SMALL, "intermediate_size": 64},
    "train": {"steps": 6, "batch_size": 4, "lr": 3.0e-3, "warmup_steps": 1},
    "prompts_per_tag": 6,
    "top_k": 8,
    "loss": "reverse_kl",
    "checkpoint_every": 2,
    "on_policy": ON_POLICY,
}


@pytest.fixture(scope="module")
def settings(tiny_cache) -> list[str]:
    """tests/tiny.yaml's overrides: the test's student, one thread, three held-out prompts."""
    return [
        f"world.cache_dir={tiny_cache}",
        "threads=1",
        "eval.heldout_limit=3",
        f"student={json.dumps(STUDENT)}",  # JSON is YAML
    ]


@pytest.fixture(scope="module")
def cfg(settings):
    return load_config(TINY, settings)


def refreshes(out: Path) -> list[dict]:
    lines = (out / "train_logs" / "student.on_policy.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.slow
def test_an_on_policy_run_is_the_same_in_a_worker_and_after_a_crash(
    cfg, tmp_path, monkeypatch, capsys
):
    """Uninterrupted, in spawned workers beside the leave-one-out copies (on-policy too, each
    graded by the one teacher it keeps) and an off-policy baseline; and in this process, killed
    after step 2's checkpoint and resumed: the student's weights are the same bytes, its
    refreshes and metrics the same; the resumed run generated only the second block."""
    baselines = {"threads": 2, "benchmark": {"baselines": ["seqkd", "leave_one_out"]}}
    apart_cfg = type(cfg).model_validate({**cfg.model_dump(), **baselines})
    assert workers.worker_count(apart_cfg, 4) == (2, 1)
    apart = pipeline.run(apart_cfg, tmp_path / "apart", world_inputs(apart_cfg))
    assert "on_policy" not in apart["models"]["baseline:seqkd"]
    for left_out in ("gemma", "qwen"):
        copy = apart["models"][f"baseline:without:{left_out}"]["on_policy"]
        assert copy["refreshes"] == 2 and copy["teacher_calls"] == 2

    train_model = workers.train_model

    def crash_at_step_3(cfg, source, plan, batches, *rest):
        def batch_at(index):
            if index == 2:
                raise KeyboardInterrupt
            return batches(index)

        return train_model(cfg, source, plan, batch_at, *rest)

    out = tmp_path / "here"
    monkeypatch.setattr(workers, "train_model", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(cfg, out, world_inputs(cfg))
    (work,) = [p for p in tmp_path.iterdir() if p.name.startswith(".here.student-")]
    assert (work / "checkpoints" / "step-00000002").is_dir()
    assert sorted(p.name for p in (work / "on_policy_buffer").iterdir()) == ["buffer-000000.pt"]
    monkeypatch.setattr(workers, "train_model", train_model)
    capsys.readouterr()
    here = pipeline.run(cfg, out, world_inputs(cfg))
    log = capsys.readouterr().err
    assert "student: resuming from" in log
    assert "on-policy refresh 1 at step 6" in log and "on-policy refresh 0" not in log

    weights = [
        (tmp_path / o / "student" / "model.safetensors").read_bytes() for o in ("apart", "here")
    ]
    assert weights[0] == weights[1]
    assert refreshes(tmp_path / "apart") == refreshes(out)
    assert [(r["block"], r["step"]) for r in refreshes(out)] == [(0, 2), (1, 6)]
    samples = ON_POLICY["buffer_prompts"] * ON_POLICY["samples_per_prompt"]
    assert all(r["samples"] == samples and r["teacher_calls"] == 2 for r in refreshes(out))
    assert here["models"]["student"] == apart["models"]["student"]
    totals = here["models"]["student"]["on_policy"]
    assert totals["refreshes"] == 2 and totals["teacher_calls"] == 4
    assert totals["samples"] == 2 * samples
    assert 0 <= totals["truncated"] <= totals["samples"]
    losses = [json.loads(line)["loss"] for line in (out / "train_logs" / "student.jsonl").open()]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_only_the_student_and_its_leave_one_out_copies_train_on_policy(cfg, tmp_path):
    """And the on-policy settings name the folders of those plans alone."""
    baselines = {"baselines": ["single", "seqkd", "leave_one_out"]}
    mixed = type(cfg).model_validate({**cfg.model_dump(), "benchmark": baselines})
    off = mixed.model_copy(update={"student": mixed.student.model_copy(update={"on_policy": None})})
    plans = model_plans(mixed)
    chosen = [p.name for p in plans if trains_on_policy(mixed, p)]
    assert chosen == ["student", "baseline:without:gemma", "baseline:without:qwen"]
    assert not any(trains_on_policy(off, p) for p in plans)
    for plan in plans:
        same = model_work_dir(tmp_path, mixed, "w", plan) == model_work_dir(
            tmp_path, off, "w", plan
        )
        assert same != (plan.name in chosen), plan.name


def test_warm_start_loads_the_given_weights_into_the_student(cfg, tmp_path):
    """`on_policy.warm_start`: the student starts from the saved weights, exactly."""
    source = world_inputs(cfg).student
    saved = source.model(7)
    saved.save_pretrained(tmp_path / "saved")
    started = cfg.student.on_policy.model_copy(update={"warm_start": tmp_path / "saved"})
    warm = cfg.model_copy(update={"student": cfg.student.model_copy(update={"on_policy": started})})
    model = source.model(cfg.student.train.seed)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    prompts = Prompts(texts=["a"], tags=["facts"], gold=[None])
    mixed_batches(warm, model, source.tokenizer(), prompts, [], lambda i: {}, tmp_path)
    expected = load_file(tmp_path / "saved" / "model.safetensors")
    state = model.state_dict()
    assert any(not torch.equal(fresh[k], state[k]) for k in expected)
    assert all(torch.equal(state[k], v) for k, v in expected.items())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["student.fusion.strategy=mince"],
            "student.on_policy: fusion strategy mince ranks teachers by reference answers",
        ),
        (["student.on_policy.mix=1.5"], "student.on_policy.mix: Input should be less than"),
        (["student.on_policy.buffer_step=2"], "student.on_policy.buffer_step: unknown key"),
    ],
)
def test_bad_on_policy_config_is_one_line(settings, tmp_path, overrides, message):
    overrides = [o.format(folder=tmp_path) for o in overrides]
    with pytest.raises(UserError) as error:
        load_config(TINY, settings + overrides)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_beside_a_store_the_live_teachers_grade_the_samples(settings, tmp_path):
    """A store holds the teachers' readings of their own answers: the off-policy steps read
    them, while the student's samples go to the live checkpoints the store was checked against."""
    stored = load_config(TINY, [*settings, f"student.store={tmp_path}"])
    paths = world_inputs(stored).teachers
    graders = grading_teachers(stored, ModelPlan("student", "evidence"), paths)
    assert [type(t) for t in graders] == [LocalTeacher, LocalTeacher]
    assert [t.name for t in graders] == ["gemma", "qwen"]
    without = grading_teachers(
        stored, ModelPlan("baseline:without:gemma", "evidence", without="gemma"), paths
    )
    assert [t.name for t in without] == ["qwen"]


def test_the_config_carries_the_on_policy_settings(cfg):
    assert cfg.student.on_policy == OnPolicyConfig(**ON_POLICY)
    assert trains_on_policy(cfg, ModelPlan("student", "evidence"))
