"""`torchrun --nproc-per-node 2 -m polydistill run` (gloo, CPU, the real launcher) trains the
student of one process: the same global batches, the same loss curve, the same final weights.

The one-process run goes first and builds the tiny world; the torchrun run reuses it (rank 0
alone reads the world and the teachers, both ranks train). Both run on one thread per process,
so that the teachers' readings, and with them the training rows, are the same bits.
"""

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from repo_paths import ROOT, TINY
from safetensors.torch import load_file
from tiny_student import OVERRIDES

from polydistill.config import load_config
from polydistill.errors import UserError
from polydistill.student.distributed import check_torchrun_run, flat_targets, targets_by_row
from polydistill.student.loss import IGNORE
from polydistill.train.distributed import Ranks, rank_share
from polydistill.train.step import LossOutput
from polydistill.world.inputs import world_inputs

SRC = ROOT / "src"
TIMEOUT_S = 300  # a busy 2-core machine; each run takes about 10 s alone
# A student of all three teachers, 4 steps of 8 rows (each rank takes 4), a DCP checkpoint at
# step 2 and 4.
STUDENT = OVERRIDES
# float32 weights of magnitude ~0.1, moved ~1e-2 by training: the two runs differ by the order
# of the gradient sums (measured: at most 2.2e-7), so 1e-6 is tight, and far below the move.
WEIGHTS_ATOL = 1e-6
SHARED = "on 2 processes"  # rank 0's log line when it trains over the ranks


def polydistill(nproc: int, *args: object) -> subprocess.CompletedProcess:
    """`polydistill` in a fresh process, or under torchrun on `nproc` processes."""
    command = [sys.executable, "-m"]
    if nproc:
        command += ["torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
        command += ["--monitor-interval", "1", "-m"]
    env = {
        **os.environ,
        "PYTHONPATH": str(SRC),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    command += ["polydistill", *map(str, args)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, Path, str]:
    """The one-process run and the 2-process run of one config: their folders, the world cache
    and the torchrun run's output."""
    root = tmp_path_factory.mktemp("torchrun-run")
    cache = root / "worlds"
    one, two = root / "one" / "run", root / "two" / "run"
    settings = [f"world.cache_dir={cache}", *STUDENT]
    single = polydistill(0, "run", TINY, "--out", one, *settings)
    assert single.returncode == 0, single.stderr[-4000:]
    assert SHARED not in single.stdout + single.stderr
    both = polydistill(2, "run", TINY, "--out", two, *settings)
    assert both.returncode == 0, both.stderr[-6000:]
    return one, two, cache, both.stdout + both.stderr


def log(run: Path) -> list[dict]:
    lines = (run / "train_logs" / "student.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_two_processes_train_the_student_of_one(runs):
    one, two, cache, output = runs
    assert SHARED in output, "the torchrun run did not train over its ranks"
    # the same global batches: every step counts the same loss tokens, and the curve agrees
    steps = log(two)
    assert [r["step"] for r in steps] == [r["step"] for r in log(one)] == [1, 2, 3, 4]
    for got, want in zip(steps, log(one), strict=True):
        assert got["loss_tokens"] == want["loss_tokens"]
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-4)
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-5)
    trained = load_file(one / "student" / "model.safetensors")
    shared = load_file(two / "student" / "model.safetensors")
    assert trained.keys() == shared.keys()
    for name, tensor in trained.items():
        torch.testing.assert_close(shared[name], tensor, rtol=0, atol=WEIGHTS_ATOL, msg=name)
    # guard: training moved the weights far beyond the tolerance (no untrained pair agrees)
    cfg = load_config(TINY, [f"world.cache_dir={cache}", *STUDENT])
    start = world_inputs(cfg).student.model(cfg.student.train.seed).state_dict()
    moved = max(float((trained[n] - start[n]).abs().max()) for n in trained)
    assert moved > 1000 * WEIGHTS_ATOL


def test_rank_zero_alone_writes_the_output(runs):
    one, two, _, _ = runs
    assert json.loads((two / "metrics.json").read_text())["models"]["student"]["accuracy"]
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    # no work folder, staging folder or second output left beside it
    assert [p.name for p in two.parent.iterdir()] == ["run"]


def test_the_cluster_path_capture_over_ranks_then_train_from_the_store(runs, tmp_path):
    """What a cluster run does (README, "Scaling out with torchrun"): the readings spread over
    the processes by `torchrun ... capture`, then `torchrun ... run` trains from that store the
    student one process trains from it. (Not the live run's: the store keeps the readings to
    its codec's bound, and Adam's first steps on a loss this small turn such differences into
    weight differences of the size of the training's move.)"""
    _, _, cache, _ = runs
    store = tmp_path / "store"
    settings = [f"world.cache_dir={cache}", *STUDENT]
    captured = polydistill(2, "capture", TINY, "--out", store, "--block-size", "8", *settings)
    assert captured.returncode == 0, captured.stderr[-4000:]
    assert len(json.loads((store / "manifest.json").read_text())["shards"]) >= 2  # both ranks'
    outs = {nproc: tmp_path / f"run{nproc}" for nproc in (0, 2)}
    for nproc, out in outs.items():
        done = polydistill(nproc, "run", TINY, "--out", out, *settings, f"student.store={store}")
        assert done.returncode == 0, done.stderr[-6000:]
        assert (SHARED in done.stdout + done.stderr) == (nproc == 2)
    one = load_file(outs[0] / "student" / "model.safetensors")
    two = load_file(outs[2] / "student" / "model.safetensors")
    # the store's targets leave this loss smaller than the live ones (~6e-4 at the end), where
    # Adam scales the gradient-sum order differences up: measured at most 1.1e-6
    atol = 10 * WEIGHTS_ATOL
    for name, tensor in one.items():
        torch.testing.assert_close(two[name], tensor, rtol=0, atol=atol, msg=name)
    cfg = load_config(TINY, settings)  # guard: training moved the weights far beyond atol
    start = world_inputs(cfg).student.model(cfg.student.train.seed).state_dict()
    assert max(float((one[n] - start[n]).abs().max()) for n in one) > 100 * atol
    assert [r["loss_tokens"] for r in log(outs[2])] == [r["loss_tokens"] for r in log(outs[0])]


def test_a_process_count_that_does_not_split_the_batch_is_one_line(runs, tmp_path):
    _, _, cache, _ = runs
    out = tmp_path / "odd"
    result = polydistill(
        2, "run", TINY, "--out", out, f"world.cache_dir={cache}", *STUDENT,
        "student.train.batch_size=7",
    )  # fmt: skip
    line = (
        "error: student.train.batch_size 7 cannot be split evenly over 2 processes; use a batch "
        "size that is a multiple of 2, or another process count\n"
    )
    assert result.stderr.count(line) == 2, result.stderr[-3000:]  # one line from each rank
    assert result.returncode != 0
    # a rank exits 2, as every UserError does (torchrun itself always exits 1); once one has
    # failed, torchrun may stop the other before its own exit is recorded
    assert result.stderr.count("exitcode  : 2") >= 1
    assert not out.exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("student.train.ema_decay=0.9", "student.train.ema_decay is not supported under torchrun"),
        ("student.validate_every=2", "student.validate_every is not supported under torchrun"),
        ("student.on_policy={mix: 0.5}", "student.on_policy is not supported under torchrun"),
        (
            "student.train.length_buckets=2",  # 8 rows in 2 buckets of 4: not over 8 processes
            "student.train.batch_size 8 (in 2 length buckets) cannot be split evenly over 8",
        ),
    ],
)
def test_what_torchrun_cannot_run_is_refused_before_it_starts(override, message):
    cfg = load_config(TINY, [*STUDENT, override])
    with pytest.raises(UserError, match=re.escape(message)):
        check_torchrun_run(cfg, 8 if "buckets" in override else 2)
    check_torchrun_run(load_config(TINY, [*STUDENT, "student.train.length_buckets=2"]), 2)


def test_targets_split_by_row_are_each_rows_flat_targets():
    """What each rank's loss reads: exactly the flat targets of its rows, in order (rows of
    different answer lengths, so that a split by position count would go wrong)."""
    lengths = [3, 1, 4, 2]  # answer positions per row
    labels = torch.full((4, 7), IGNORE)
    for row, count in enumerate(lengths):
        labels[row, 7 - count :] = 1
    total = sum(lengths)
    flat = {
        "target_ids": torch.arange(total * 2).view(total, 2),
        "target_logprobs": torch.randn(total, 2, dtype=torch.float64),
        "target_tail": torch.randn(total, dtype=torch.float64),
        "target_mask": torch.arange(total) % 3 > 0,
    }
    batch = {"input_ids": torch.ones(4, 7, dtype=torch.long), "labels": labels, **flat}
    seen = []
    loss = flat_targets(lambda model, b: seen.append(b) or LossOutput(torch.zeros(()), 0, {}))
    by_row = targets_by_row(lambda index: batch)(0)
    starts = [0, *itertools.accumulate(lengths)]
    for rank in range(2):
        loss(None, rank_share(by_row, Ranks(rank, 2, torch.device("cpu"))))
        want = slice(starts[2 * rank], starts[2 * rank + 2])
        for key, tensor in flat.items():
            assert torch.equal(seen[-1][key], tensor[want]), key
        assert "target_rows" not in seen[-1]


def test_ranks_started_with_different_configs_stop_in_one_line(tmp_path):
    """The real CLI on each rank, each with its own `student.train.seed`: the ranks refuse, the
    same one line, before rank 0 builds or reads anything, and exit with its code 2 (or, after
    the first has, are stopped by torchrun)."""
    script = tmp_path / "differing.py"
    arguments = ["run", str(TINY), "--out", str(tmp_path / "out"), *STUDENT]
    script.write_text(
        "import os, sys\n"
        "from polydistill.cli import main\n"
        f"sys.argv = ['polydistill', *{arguments!r}, 'student.train.seed=' + os.environ['RANK']]\n"
        "main()\n"
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", "--monitor-interval", "1", str(script)]
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    # found anywhere in the stream: torchrun's own log lines may land amid the ranks' lines
    errors = re.findall(
        r"error: the ranks were started with different configs: rank 0 has \w+, rank 1 has \w+; "
        r"start every rank with the same config\n",
        result.stderr,
    )
    assert errors and len(set(errors)) == 1, result.stderr[-3000:]
    # torchrun's report: each failed rank's exit code. The first rank to exit exits 2; torchrun
    # then stops the others (SIGTERM: -15, or 143 through our handler) unless they exited 2
    # first. Nothing else: a rank that crashes on its way out (SIGABRT, -6) is a bug.
    exits = re.findall(r"rank\s+: \d+ \(local_rank: \d+\)\n\s+exitcode\s+: (-?\d+)", result.stderr)
    assert len(exits) == 2 and "2" in exits, result.stderr[-3000:]
    assert set(exits) <= {"2", "-15", "143"}, result.stderr[-3000:]
    assert not (tmp_path / "out").exists()
