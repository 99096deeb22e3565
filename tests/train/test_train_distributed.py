"""Training under torchrun (gloo, CPU): the real launcher starts the worker script
tests/support/distributed_worker.py.

Every run is checked against `train.loop.train` in this process on the same float64 model and
global batches: the same loss curve within 1e-5 relative and the same final weights, for DDP and
FSDP2, uninterrupted or killed and resumed at another process count.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from distributed_worker import LOOP, ROWS, batch_at, tiny_model
from repo_paths import ROOT, TESTS
from safetensors.torch import load_file

from polydistill.config.distributed import DistributedConfig
from polydistill.errors import UserError
from polydistill.train import sft_loss, train
from polydistill.train.distributed import process_group

WORKER = TESTS / "support" / "distributed_worker.py"
SRC = ROOT / "src"
LAUNCH_TIMEOUT_S = 240  # two processes importing torch and transformers on a busy machine


@pytest.fixture(scope="module")
def reference() -> tuple[list[dict], dict[str, torch.Tensor]]:
    """The one-process run: its step records and final weights."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = tiny_model()
        records = train(model, batch_at, sft_loss, **LOOP)
    finally:
        torch.set_num_threads(threads)
    return records, {k: v.detach().clone() for k, v in model.state_dict().items()}


def torchrun(tmp_path: Path, nproc: int, **spec) -> subprocess.CompletedProcess:
    """Launch the worker on `nproc` processes with `spec`; output folder tmp_path/out-<n>."""
    runs = len(list(tmp_path.glob("spec-*.json")))
    spec.setdefault("out", str(tmp_path / f"out-{runs}"))
    path = tmp_path / f"spec-{runs}.json"
    path.write_text(json.dumps(spec))
    env = {
        **os.environ,
        "PYTHONPATH": f"{SRC}{os.pathsep}{WORKER.parent}",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    # torchrun looks at its workers every 2 s here, so a survivor reports its own error first
    command += ["--nproc-per-node", str(nproc), "--monitor-interval", "2", str(WORKER), str(path)]
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S
    )


def assert_same_run(out: Path, reference: tuple[list[dict], dict[str, torch.Tensor]]) -> None:
    """The run's records match the reference's last ones, and its final weights its weights."""
    want_records, want_weights = reference
    records = json.loads((out / "records.json").read_text())
    assert records, "the run recorded no step"
    assert [r["step"] for r in records] == [r["step"] for r in want_records[-len(records) :]]
    for got, want in zip(records, want_records[-len(records) :], strict=True):
        assert got["loss_tokens"] == want["loss_tokens"]
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-5)
    weights = load_file(out / "final" / "model.safetensors")
    assert weights.keys() == want_weights.keys()
    for name, tensor in want_weights.items():
        torch.testing.assert_close(weights[name], tensor, rtol=1e-6, atol=1e-9, msg=name)


def test_the_data_tells_a_per_rank_mean_from_the_global_one():
    """Guard for the comparisons below: the two halves of the micro-batches count different
    numbers of loss tokens, so a step that averaged per rank would not match one process."""
    halves = [
        [int((batch_at(i)["labels"][rows] != -100).sum()) for rows in (slice(0, 2), slice(2, 4))]
        for i in range(LOOP["steps"] * LOOP["accumulation_steps"])
    ]
    assert sum(a != b for a, b in halves) >= len(halves) // 2, halves


def test_reference_run_moves_the_weights(reference):
    initial = tiny_model().state_dict()
    moved = max((reference[1][k] - v).abs().max().item() for k, v in initial.items())
    assert moved > 1e-3


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_take_the_one_process_steps(tmp_path, reference, strategy):
    done = torchrun(tmp_path, 2, strategy=strategy, run_dir=str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(tmp_path / "out-0", reference)
    log = (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == list(range(1, LOOP["steps"] + 1))


def test_rank_killed_while_checkpointing_then_resumed_on_one_process(tmp_path, reference):
    """DDP on 2 processes; rank 1 dies writing step 4's checkpoint: rank 0 stops with a clear
    error, only step 2's checkpoint exists; 1 process resumes from it to the reference."""
    run = {"strategy": "ddp", "run_dir": str(tmp_path / "run"), "checkpoint_every": 2}
    die = {"rank": 1, "step": 4, "during": "checkpoint"}
    killed = torchrun(tmp_path, 2, **run, die=die, timeout_s=60)
    assert killed.returncode != 0
    assert "error: rank 0 of 2 stopped at step 4: another rank died" in killed.stderr
    checkpoints = tmp_path / "run" / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["step-00000002"]
    resumed = torchrun(tmp_path, 1, **run, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((tmp_path / "out-1" / "records.json").read_text())[0]["step"] == 3
    assert_same_run(tmp_path / "out-1", reference)
    with pytest.raises(UserError, match=r"written by a torchrun run .* resume it under torchrun"):
        train(tiny_model(), batch_at, sft_loss, **LOOP, resume=True, **_one_process(run))


def _one_process(run: dict) -> dict:
    return {"run_dir": Path(run["run_dir"]), "checkpoint_every": run["checkpoint_every"]}


def test_one_process_killed_then_resumed_on_two_with_fsdp(tmp_path, reference):
    run = {"strategy": "fsdp", "run_dir": str(tmp_path / "run"), "checkpoint_every": 2}
    killed = torchrun(tmp_path, 1, **run, die={"rank": 0, "step": 3, "during": "step"})
    assert killed.returncode != 0
    names = [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()]
    assert names == ["step-00000002"]
    resumed = torchrun(tmp_path, 2, **run, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(tmp_path / "out-1", reference)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def test_world_size_that_does_not_divide_the_batch_stops_before_a_step(tmp_path):
    rows = ROWS - 1
    done = torchrun(tmp_path, 2, strategy="ddp", rows=rows, run_dir=str(tmp_path / "run"))
    assert done.returncode != 0
    assert "exitcode  : 2" in done.stderr
    assert _error_lines(done.stderr) == [
        f"error: the global micro-batch has {rows} rows, which 2 processes cannot split evenly;"
        f" use a process count that divides {rows}, or change the batch size"
    ]
    assert not (tmp_path / "run" / "train_log.jsonl").exists()


def test_ranks_with_different_configs_stop_with_one_line(tmp_path):
    other = {"1": {"data": "another file"}}
    done = torchrun(tmp_path, 2, strategy="ddp", fingerprint_by_rank=other)
    assert done.returncode != 0
    assert "exitcode  : 2" in done.stderr
    (line,) = _error_lines(done.stderr)
    assert line.startswith("error: the ranks were started with different configs: rank 0 has ")
    assert line.endswith("; start every rank with the same config")


def test_a_one_process_checkpoint_is_not_resumed_under_torchrun(tmp_path):
    run_dir = tmp_path / "run"
    train(
        tiny_model(),
        batch_at,
        sft_loss,
        **{**LOOP, "steps": 2},
        **_one_process({"run_dir": str(run_dir), "checkpoint_every": 2}),
    )
    done = torchrun(
        tmp_path, 2, strategy="ddp", run_dir=str(run_dir), checkpoint_every=2, resume=True
    )
    assert done.returncode != 0
    (line,) = _error_lines(done.stderr)
    assert "was written by one process (not sharded); resume it without torchrun" in line


def test_a_rank_that_hangs_is_given_up_on_after_the_timeout(tmp_path):
    """Rank 1 stays alive but silent at step 2: rank 0's collective times out after timeout_s
    (long enough for the ranks' start-up to differ on a busy machine) with one clear line."""
    die = {"rank": 1, "step": 2, "during": "hang"}
    done = torchrun(tmp_path, 2, strategy="ddp", die=die, timeout_s=10)
    assert done.returncode != 0
    (line,) = _error_lines(done.stderr)
    assert line.startswith(
        "error: rank 0 of 2 stopped at step 2: another rank died or did not answer in time ("
    )


def test_ranks_that_see_different_checkpoints_stop_before_resuming(tmp_path):
    """As when the run folder is on one node's own disk: rank 1 sees none of rank 0's."""
    (tmp_path / "run" / "checkpoints" / "step-00000002").mkdir(parents=True)
    runs = {"0": str(tmp_path / "run"), "1": str(tmp_path / "elsewhere")}
    done = torchrun(
        tmp_path, 2, strategy="ddp", run_dir_by_rank=runs, checkpoint_every=2, resume=True
    )
    assert done.returncode != 0
    assert _error_lines(done.stderr) == [
        f"error: the ranks see different checkpoints in {tmp_path / 'run' / 'checkpoints'}: "
        "newest on rank 0 step-00000002, on rank 1 none; put the run folder on a file system "
        "every node shares"
    ]


def test_a_refusal_inside_the_process_group_leaves_it(monkeypatch):
    """A UserError raised inside `process_group` tears the group down before it propagates: left
    to the interpreter's exit, gloo's joinable threads abort the process (SIGABRT) instead of
    letting it exit with the refusal's code 2 (seen in 2 of 12 torchrun runs of differing
    configs before). A one-process gloo group is enough to see whether it was left."""
    with socket.socket() as probe:  # a free port for this group's store
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    variables = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    for name, value in {**variables, "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(name, value)
    with (
        pytest.raises(UserError, match="refused"),
        process_group(DistributedConfig(backend="gloo")),
    ):
        assert dist.is_initialized()
        raise UserError("refused")
    assert not dist.is_initialized()
