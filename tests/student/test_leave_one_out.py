"""The leave-one-out baseline: the student's recipe without each teacher in turn. Its readings
are those a gathering without that teacher would give (`teachers.readings.readings_without`)."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from polydistill.config import load_config
from polydistill.errors import UserError
from polydistill.student.plans import ModelPlan, model_plans, student_fingerprint
from polydistill.teachers.protocol import TeacherRows
from polydistill.teachers.readings import Readings, distinct_candidates, readings_without

TINY = Path(__file__).parents[1] / "tiny.yaml"
NAMES = ("gemma", "gptoss", "qwen")


def rows_for(tag: int) -> TeacherRows:
    ids = np.array([tag, tag + 1], dtype=np.int64)
    top = np.zeros((1, 1), dtype=np.float32)
    return TeacherRows(ids, 1, ids[1:, None], top, np.zeros(1, dtype=np.float32))


def readings_of(answers: dict[str, list[list[str]]], prompts: int) -> Readings:
    """Readings whose rows say which (teacher, candidate text) they belong to."""
    candidates = distinct_candidates(answers, prompts)
    candidates_of = [[c for c, x in enumerate(candidates) if x.prompt == i] for i in range(prompts)]
    rows = {
        name: [rows_for(hash((name, c.prompt, c.text)) % 10_000) for c in candidates]
        for name in answers
    }
    return Readings(candidates, candidates_of, rows)


@given(
    st.lists(
        st.tuples(*[st.sampled_from("abc")] * 3), min_size=1, max_size=5
    ),  # one answer per teacher per prompt, from a small alphabet so that they coincide
    st.sampled_from(NAMES),
)
def test_leaving_a_teacher_out_equals_never_asking_it(per_prompt, left_out):
    answers = {name: [[p[t] for p in per_prompt]] for t, name in enumerate(NAMES)}
    full = readings_of(answers, len(per_prompt))
    without = readings_without(full, left_out)
    others = {name: a for name, a in answers.items() if name != left_out}
    expected = readings_of(others, len(per_prompt))
    assert without.candidates == expected.candidates
    assert without.candidates_of == expected.candidates_of
    assert set(without.rows) == set(others)
    for name in others:
        got = [r.ids.tolist() for r in without.rows[name]]
        assert got == [r.ids.tolist() for r in expected.rows[name]]


def tiny(*overrides: str):
    return load_config(TINY, ["student.teachers=[gemma, gptoss, qwen]", *overrides])


def test_one_plan_per_teacher_with_the_students_recipe():
    cfg = tiny("benchmark.baselines=[leave_one_out]")
    plans = model_plans(cfg)
    assert [p.name for p in plans] == [
        "student",
        "baseline:without:gemma",
        "baseline:without:gptoss",
        "baseline:without:qwen",
    ]
    assert {(p.strategy, p.without) for p in plans[1:]} == {
        ("evidence", "gemma"),
        ("evidence", "gptoss"),
        ("evidence", "qwen"),
    }


def test_other_plans_keep_their_work_folder_keys(tiny_world):
    cfg = tiny()
    key = student_fingerprint(cfg, tiny_world.root.name, ModelPlan("student", "evidence"))["plan"]
    assert key == {"name": "student", "strategy": "evidence", "fixed": None, "sft": None}
    left = student_fingerprint(
        cfg, tiny_world.root.name, ModelPlan("b", "evidence", without="qwen")
    )
    assert left["plan"]["without"] == "qwen"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["student.teachers=[gemma]"], "leave_one_out needs two or more teachers"),
        (
            [
                "student.fusion.strategy=route",
                "student.fusion.routes={arithmetic: gptoss, facts: qwen, strings: gemma}",
            ],
            "leave_one_out needs a strategy that does not name teachers",
        ),
    ],
)
def test_leave_one_out_needs_a_recipe_it_can_drop_a_teacher_from(overrides, message):
    with pytest.raises(UserError, match=message):
        load_config(
            TINY,
            [
                "student.teachers=[gemma, gptoss, qwen]",
                "benchmark.baselines=[leave_one_out]",
                *overrides,
            ],
        )
