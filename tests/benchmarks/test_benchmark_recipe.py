"""benchmarks/student_recipe.py end to end on the tiny world, and its recipe handling."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from repo_paths import ROOT, TINY

from polydistill.errors import UserError

STUDENT = {
    "teachers": ["gemma", "gptoss", "qwen"],
    "family": "qwen",
    "model": {
        "hidden_size": 64, "layers": 1, "heads": 1, "kv_heads": 1, "head_dim": 64,
        "intermediate_size": 64,
    },
    "train": {"steps": 4, "batch_size": 8, "lr": 3.0e-3, "warmup_steps": 1, "ema_decay": 0.9},
    "prompts_per_tag": 8,
    "top_k": 8,
}  # fmt: skip


@pytest.fixture(scope="module")
def config(tmp_path_factory, tiny_cache) -> Path:
    raw = yaml.safe_load(TINY.read_text())
    raw["world"]["cache_dir"] = str(tiny_cache)
    raw["student"] = STUDENT
    path = tmp_path_factory.mktemp("recipe") / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def recipe():
    # the repository root is on the import path: tests/benchmarks/conftest.py
    from benchmarks import student_recipe

    return student_recipe


@pytest.mark.slow
def test_recipes_train_side_by_side_and_score_raw_and_averaged_weights(
    config, tiny_world, tmp_path, recipe
):
    out = tmp_path / "recipe.json"
    command = [sys.executable, "-m", "benchmarks.student_recipe", "--json", str(out)]
    command += ["--config", str(config), "--every", "3"]
    command += ["--recipe", "base=", "--recipe", "facts=student.prompts_per_tag={facts: 3}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    domains = ["arithmetic", "facts", "strings"]
    assert result["domains"] == domains and result["workers"] == 2
    best = {d: max(t[d] for t in result["teachers"].values()) for d in domains}
    assert result["targets"] == pytest.approx({d: 0.95 * best[d] for d in domains})
    assert [r["name"] for r in result["recipes"]] == ["base", "facts"]
    assert result["recipes"][1]["overrides"] == ["student.prompts_per_tag={facts: 3}"]
    for run in result["recipes"]:
        assert run["decay"] == 0.9 and run["params"] > 0
        assert [p["step"] for p in run["points"]] == [3, 4]  # every 3 steps, and the last
        for point in run["points"]:
            for weights in ("raw", "averaged"):
                assert set(point[weights]) == set(domains)
                assert all(0 <= a <= 1 for a in point[weights].values())
    assert result["command"].startswith("python -m benchmarks.student_recipe --config ")
    text = recipe.markdown(result)
    assert text.startswith(recipe.SECTION) and text.count("\n| ") == 2 + 2 * 2


def test_recipe_arguments(config, recipe):
    assert recipe.parse_recipe("a b=x.y=1; z={p: 1, q: 2} ;") == (
        "a b",
        ["x.y=1", "z={p: 1, q: 2}"],
    )
    with pytest.raises(UserError, match="expected NAME=OVERRIDES"):
        recipe.parse_recipe("nameless")
    with pytest.raises(UserError, match="given twice"):
        recipe.load_recipes(config, ["a=", "a=student.top_k=4"], [])
    with pytest.raises(UserError, match="'b' changes the world"):
        recipe.load_recipes(config, ["a=", "b=world.seed=7"], [])
    recipes = ["a=", "b=student.train.lr=0.1;student.train.seed=3", "c=student.top_k=4"]
    recipes += [
        "d=student.completions_per_prompt=2",
        "e=student.completions_per_prompt=2;student.train.seed=3",
    ]
    keys = [recipe.rows_key(cfg) for cfg, _ in recipe.load_recipes(config, recipes, []).values()]
    assert keys[0] == keys[1]  # learning rate and seed leave greedy answers alone
    assert len({keys[0], keys[2], keys[3], keys[4]}) == 4  # a seed draws other sampled answers
