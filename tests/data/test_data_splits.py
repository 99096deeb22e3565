"""Hashed splits: deterministic, independent of row order, in the configured shares; files per
split; a prompt in a held-out file and in a training file stays held out."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prompt_files import write_prompts

from polydistill.data import DataConfig, DataSummary, read_prompts
from polydistill.data.records import normalise
from polydistill.data.splits import hashed_split, position
from polydistill.errors import UserError

prompt_lists = st.lists(st.text(min_size=1, max_size=12).filter(str.strip), min_size=1, max_size=40)


def _splits(tmp_path, prompts: list[str], name: str, **config) -> dict[str, str]:
    """Each kept prompt's split; a tiny draw may leave a split empty, which is reported only
    once every record has streamed, so what was assigned is still all there."""
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts), encoding="utf-8")
    assigned: dict[str, str] = {}
    try:
        for record in read_prompts(DataConfig(train=path, **config)):
            assigned[record.messages[0].content] = record.split
    except UserError as error:
        assert "prompts left" in str(error)
    return assigned


@settings(max_examples=40, deadline=None)
@given(prompts=prompt_lists, order=st.randoms(use_true_random=False), seed=st.integers(0, 3))
def test_split_depends_on_the_prompt_alone(tmp_path_factory, prompts, order, seed):
    """The same prompts in another order, each repeated, get the same splits."""
    tmp_path = tmp_path_factory.mktemp("splits")
    config = {"fractions": {"validation": 0.3, "test": 0.3}, "split_seed": seed}
    shuffled = prompts + prompts
    order.shuffle(shuffled)
    first = _splits(tmp_path, prompts, "a", **config)
    assert set(first) == {normalise(p) for p in prompts}
    assert _splits(tmp_path, shuffled, "b", **config) == first
    assert _splits(tmp_path, prompts, "c", **config) == first


def test_shares_are_close_to_the_fractions_and_the_seed_moves_them(tmp_path):
    prompts = [f"question {i}" for i in range(4000)]
    shares = {"validation": 0.1, "test": 0.2}
    a = _splits(tmp_path, prompts, "a", fractions=shares)
    b = _splits(tmp_path, prompts, "b", fractions=shares, split_seed=1)
    for split, share in (("validation", 0.1), ("test", 0.2), ("train", 0.7)):
        assert abs(sum(s == split for s in a.values()) / 4000 - share) < 0.03
    assert sum(a[p] != b[p] for p in prompts) > 1000


def test_test_split_stays_when_the_validation_share_changes(tmp_path):
    prompts = [f"q{i}" for i in range(2000)]
    small = _splits(tmp_path, prompts, "a", fractions={"validation": 0.05, "test": 0.1})
    large = _splits(tmp_path, prompts, "b", fractions={"validation": 0.3, "test": 0.1})
    assert {p for p, s in small.items() if s == "test"} == {
        p for p, s in large.items() if s == "test"
    }


def test_files_per_split_and_held_out_files_win_a_shared_prompt(tmp_path):
    train = write_prompts([{"prompt": p} for p in ("a", "b", "shared")], tmp_path / "tr", "jsonl")
    test = write_prompts([{"prompt": p} for p in ("shared", "t")], tmp_path / "te", "parquet")
    summary = DataSummary()
    config = DataConfig(train=train, test=test, fractions={"validation": 0.0})
    records = list(read_prompts(config, summary=summary))
    assert {(r.messages[0].content, r.split) for r in records} == {
        ("a", "train"),
        ("b", "train"),
        ("shared", "test"),
        ("t", "test"),
    }
    assert summary.duplicates == 1 and summary.kept == {"train": 2, "test": 2}


def test_validation_is_carved_from_train_when_only_test_has_files(tmp_path):
    train = write_prompts([{"prompt": f"p{i}"} for i in range(400)], tmp_path / "tr", "csv")
    test = write_prompts([{"prompt": "t"}], tmp_path / "te", "jsonl")
    config = DataConfig(train=train, test=test, fractions={"validation": 0.25})
    splits = [r.split for r in read_prompts(config)]
    assert splits.count("test") == 1
    assert 60 < splits.count("validation") < 140 and splits.count("train") > 250


def test_a_fraction_for_a_split_with_files_is_refused(tmp_path):
    path = write_prompts([{"prompt": "a"}], tmp_path / "p", "jsonl")
    with pytest.raises(ValueError, match=r"fractions\.test applies only when test has no files"):
        DataConfig(train=path, test=path, fractions={"test": 0.2})


def test_positions_are_fixed_forever():
    """Splits must not move between versions or machines: the hash and its reading are pinned."""
    assert position("7b874d7e1a39d460", 0) == pytest.approx(0.16771263657300978, abs=1e-15)
    assert position("7b874d7e1a39d460", 1) == pytest.approx(0.054372227123749985, abs=1e-15)
    assert hashed_split("7b874d7e1a39d460", 1, {"test": 0.06}) == "test"
    assert hashed_split("7b874d7e1a39d460", 0, {"test": 0.06, "validation": 0.10}) == "train"
    assert hashed_split("7b874d7e1a39d460", 0, {"test": 0.06, "validation": 0.11}) == "validation"
