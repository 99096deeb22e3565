"""During readings, at most one teacher's weights are in memory: `local_teacher` loads its
weights on first use, and `gather_readings` releases each teacher after each of its passes.

The count is of live model objects (weak references), so a teacher kept loaded shows."""

import gc
import weakref

import pytest

from polydistill.teachers import local
from polydistill.teachers.local import local_teacher
from polydistill.teachers.readings import gather_readings


@pytest.fixture
def live_models(monkeypatch):
    """Counts the models `local_teacher` loads that are still alive; the largest count seen."""
    live: set[int] = set()
    seen = {"most": 0, "loads": 0}
    load_model = local.load_model

    def counted(*args, **kwargs):
        gc.collect()
        model = load_model(*args, **kwargs)
        key = id(model)
        live.add(key)
        weakref.finalize(model, live.discard, key)
        seen["loads"] += 1
        seen["most"] = max(seen["most"], len(live))
        return model

    monkeypatch.setattr(local, "load_model", counted)
    return seen


def test_gather_readings_holds_one_teacher_at_a_time(tiny_world, live_models):
    names = sorted(tiny_world.teachers)
    teachers = [local_teacher(n, tiny_world.teachers[n], batch_size=8) for n in names]
    assert live_models["loads"] == 0  # nothing loaded before it is needed
    prompts = [e.prompt for e in tiny_world.heldout["arithmetic"][:4]]
    readings = gather_readings(
        teachers, prompts, samples=1, max_new_tokens=6, seed=0, top_k=4, temperature=1.0
    )
    assert set(readings.rows) == set(names)
    assert len(names) >= 2
    assert live_models["loads"] == 2 * len(names)  # one load to answer, one to score
    assert live_models["most"] == 1


def test_a_released_teacher_reads_the_same_as_a_loaded_one(tiny_world):
    name = sorted(tiny_world.teachers)[0]
    teacher = local_teacher(name, tiny_world.teachers[name], batch_size=8)
    prompts = [e.prompt for e in tiny_world.heldout["strings"][:3]]
    kept = teacher.complete(prompts, samples=1, max_new_tokens=6, seed=0)
    first = teacher.score(prompts, kept[0], top_k=4, temperature=1.0)
    teacher.release()
    assert teacher._model is None
    again = teacher.score(prompts, kept[0], top_k=4, temperature=1.0)
    for a, b in zip(first, again, strict=True):
        assert (a.top_ids == b.top_ids).all() and (a.top_logprobs == b.top_logprobs).all()
