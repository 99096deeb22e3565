"""Training from a store, a block at a time: the same readings, rows, accounts and batches as the
whole store read at once, and memory that does not grow with the prompts.

The teachers are tiny random models of two world tokenizer styles (`onpolicy_models`), so every
row is a real cross-tokenizer projection; the prompts repeat across blocks, so some answers are
read from the block where the store first holds them, as a store teacher reads them.
"""

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from align_tokenizers import tokenizer
from onpolicy_models import teacher

from polydistill import progress
from polydistill.chat import PlainText
from polydistill.config import load_config
from polydistill.data.records import Turn
from polydistill.store.blocks import block_readings, first_candidates
from polydistill.store.cached import open_store, store_teachers
from polydistill.store.capture import capture_store
from polydistill.student.batches import distillation_batches
from polydistill.student.plans import ModelPlan, plan_data
from polydistill.student.prompts import Prompts
from polydistill.student.readings import reading_chunks
from polydistill.student.rows import EXAMPLES_FILE, DiskRows, write_accounts, write_plan_rows
from polydistill.teachers.readings import gather_readings
from polydistill.train.reproducible import fixed_threads

TINY = Path(__file__).parents[1] / "tiny.yaml"
NAMES = ("qwen", "gemma")
PLANS = [
    ModelPlan("student", "evidence"),
    ModelPlan("baseline:single:qwen", "fixed", {"qwen": 1.0}),
    ModelPlan("baseline:without:gemma", "evidence", without="gemma"),
    ModelPlan("baseline:product", "product"),
    ModelPlan("baseline:confidence", "confidence"),
]


def settings(top_k: int, samples: int) -> list[str]:
    return [
        "student.teachers=[qwen, gemma]",
        f"student.top_k={top_k}",
        f"student.completions_per_prompt={samples}",
        "student.train.seed=3",
        "eval.max_new_tokens=4",
    ]


def make_prompts(n: int, repeat: int = 0) -> Prompts:
    """`n` distinct prompts of every shape (one user turn, a conversation with a system turn,
    completion-style text: the store keys each whole), then the first `repeat` of them again
    (in later blocks)."""
    texts: list = []
    for i in range(n):
        question = f"What is {i % 97} plus {i // 97 + 3}?"
        if i % 3 == 1:
            question = (Turn("system", "Answer briefly."), Turn("user", question))
        elif i % 3 == 2:
            question = PlainText(question)
        texts.append(question)
    texts += texts[:repeat]
    tags = ["even" if i % 2 else "odd" for i in range(len(texts))]
    return Prompts(texts, tags, [None] * len(texts))


def capture(root: Path, prompts: Prompts, cfg, block: int) -> list:
    """The store teachers of a fresh capture of `prompts` (block size `block`)."""
    live = [teacher(name, name, seed) for seed, name in enumerate(NAMES, 1)]
    s = cfg.student
    with fixed_threads(1):  # matrices this small run fastest on one thread
        capture_store(
            live, prompts.texts, root, top_k=s.top_k, temperature=s.temperature,
            samples=s.completions_per_prompt, max_new_tokens=cfg.eval.max_new_tokens,
            seed=s.train.seed, block_size=block, show_progress=False,
        )  # fmt: skip
    store = open_store(root)
    return store_teachers(store, {n: store.manifest["teachers"][n]["fingerprint"] for n in NAMES})


@pytest.fixture(scope="module")
def whole_and_blocks(tmp_path_factory):
    cfg = load_config(TINY, settings(top_k=8, samples=2))
    prompts = make_prompts(28, repeat=12)
    teachers = capture(tmp_path_factory.mktemp("store") / "store", prompts, cfg, block=8)
    s = cfg.student
    whole = gather_readings(
        teachers, prompts.texts, samples=2, max_new_tokens=4, seed=3, top_k=8,
        temperature=s.temperature,
    )  # fmt: skip
    return cfg, prompts, teachers, whole


def test_blocks_give_the_readings_of_the_whole_store(whole_and_blocks):
    cfg, prompts, teachers, whole = whole_and_blocks
    blocks = list(
        block_readings(
            teachers, prompts.texts, samples=2, max_new_tokens=4, seed=3, top_k=8,
            temperature=cfg.student.temperature,
        )
    )  # fmt: skip
    assert [first for first, _ in blocks] == [0, 8, 16, 24, 32]
    got = [(first + c.prompt, c.text, c.authors) for first, r in blocks for c in r.candidates]
    assert got == [(c.prompt, c.text, c.authors) for c in whole.candidates]
    # some answers to repeated prompts are read where the store first holds them: another shard
    first_of, starts = first_candidates(teachers[0].store)
    assert (first_of < np.repeat(starts[:-1], np.diff(starts))).any()
    for name in NAMES:
        rows = [row for _, r in blocks for row in r.rows[name]]
        assert len(rows) == len(whole.rows[name])
        for want, have in zip(whole.rows[name], rows, strict=True):
            assert want.start == have.start
            for field in ("ids", "top_ids", "top_logprobs", "token_logprobs"):
                assert (getattr(want, field) == getattr(have, field)).all(), field


def test_rows_accounts_and_batches_equal_the_whole_in_memory(whole_and_blocks, tmp_path):
    cfg, prompts, teachers, whole = whole_and_blocks
    student = tokenizer("world-student")
    folders = {tmp_path / plan.name.replace(":", "-") / "rows": plan for plan in PLANS}
    tallies = write_plan_rows(
        cfg, folders, teachers, student, reading_chunks(cfg, teachers, prompts)
    )
    projections: dict = {}
    firsts = []
    for folder, plan in folders.items():
        want, accounts = plan_data(cfg, plan, teachers, student, prompts, whole, projections)
        rows = DiskRows(folder)
        assert list(rows.prompt_of) == want.prompt_of and len(rows) == len(want)
        all_rows = range(len(want))
        have_prompts, have_answers, have = rows.take(all_rows)
        want_prompts, want_answers, targets = want.take(all_rows)
        assert (have_prompts, have_answers) == (want_prompts, want_answers)
        for field in ("ids", "logprobs", "tail", "mask"):
            assert torch.equal(getattr(have, field), getattr(targets, field)), field
        firsts.append(targets.logprobs[:, 0])
        # contributions.json, streamed from the spilled examples, is today's file to the byte
        written = tmp_path / f"{plan.name}.json"
        examples = folder.parent / EXAMPLES_FILE
        write_accounts(written, tallies[folder].accounts(plan.strategy), examples)
        assert written.read_text() == json.dumps(accounts, indent=1)
        for buckets in (1, 2):
            from_disk = distillation_batches(rows, 0, 8, seed=5, buckets=buckets)
            in_memory = distillation_batches(want, 0, 8, seed=5, buckets=buckets)
            for index in range(12):  # past one pass over the rows
                a, b = from_disk(index), in_memory(index)
                assert a.keys() == b.keys()
                assert all(torch.equal(a[k], b[k]) for k in a), (plan.name, index)
    # the plans' rows differ: a folder mixed up with another's would not pass
    assert not torch.equal(firsts[0], firsts[1])


def traced_peak(root: Path, n: int) -> tuple[int, int]:
    """Peak Python-traced bytes of reading a store of `n` prompts block by block, writing the
    student's rows and building every batch of a pass; and the bytes of the rows written."""
    cfg = load_config(TINY, settings(top_k=64, samples=1))
    prompts = make_prompts(n)
    teachers = capture(root / "store", prompts, cfg, block=16)
    folder = root / "rows"
    tracemalloc.start()
    try:
        chunks = reading_chunks(cfg, teachers, prompts)
        write_plan_rows(cfg, {folder: PLANS[0]}, teachers, tokenizer("world-student"), chunks)
        rows = DiskRows(folder)
        batch_at = distillation_batches(rows, 0, 8, seed=0)
        for index in range(len(rows) // 8):
            batch_at(index)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, sum(p.stat().st_size for p in folder.glob("*.bin"))


def test_training_from_a_store_holds_a_block_not_every_prompt(tmp_path, monkeypatch):
    """10 times the prompts, about the same peak: a block's readings and rows, a batch's rows
    (numpy arrays and Python objects are traced; torch's own buffers are not, but every row
    and reading passes through numpy or Python lists on its way). The progress bars are
    silenced: what pytest captures of them would be traced too."""
    monkeypatch.setattr(progress.console, "quiet", True)
    traced_peak(tmp_path / "warm", 16)  # one-time allocations (imports, caches) out of the way
    small, _ = traced_peak(tmp_path / "small", 32)
    large, written = traced_peak(tmp_path / "large", 320)
    slack = 0.25 * small
    # the test has teeth: holding the rows of every prompt would take twice the slack
    assert written > 2 * slack, (written, small)
    assert large < small + slack, f"peak {large:,} bytes for 320 prompts, {small:,} for 32"
