"""`torchrun --nproc-per-node 2 -m polydistill capture` (gloo, CPU, the real launcher): each
process captures its share of the blocks into one store, rank 0 builds the world first, and the
store is the one a single process captures, block for block, bit for bit."""

import json
import os
import subprocess
import sys

from repo_paths import ROOT, TINY

TIMEOUT_S = 300
CAPTURE = [
    "threads=1",
    "student.teachers=[gemma, gptoss, qwen]",
    "student.top_k=8",
    "student.prompts_per_tag=6",
    "eval.max_new_tokens=4",
]


def polydistill(nproc: int, *args: object) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m"]
    if nproc:
        command += ["torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
        command += ["--monitor-interval", "1", "-m"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    command += ["polydistill", *map(str, args)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


def failure(done: subprocess.CompletedProcess) -> str:
    """The ranks' own output without progress and weight-loading lines, so that the rank that
    failed first is not cut off by torchrun's report."""
    noise = ("Loading weights", "━", "it/s]", "tok/s")
    kept = [line for line in done.stderr.splitlines() if not any(n in line for n in noise)]
    return "\n".join(kept)[-8000:]


def shards(store) -> list[tuple[int, str]]:
    manifest = json.loads((store / "manifest.json").read_text())
    return [(s["block"], s["sha256"]) for s in manifest["shards"]]


def test_two_processes_capture_the_store_of_one(tmp_path) -> None:
    cache = tmp_path / "worlds"  # empty: rank 0 builds the world, rank 1 waits for it
    settings = [f"world.cache_dir={cache}", *CAPTURE]
    two = polydistill(2, "capture", TINY, "--out", tmp_path / "two", "--block-size", "4", *settings)
    assert two.returncode == 0, failure(two)
    assert "complete" in two.stdout
    assert len(list(cache.iterdir())) == 1  # one world, built once
    one = polydistill(0, "capture", TINY, "--out", tmp_path / "one", "--block-size", "4", *settings)
    assert one.returncode == 0, failure(one)
    blocks = shards(tmp_path / "two")
    assert len(blocks) >= 4  # both processes had blocks to capture
    assert blocks == shards(tmp_path / "one")


def test_a_shard_given_under_torchrun_is_one_line(tmp_path) -> None:
    done = polydistill(2, "capture", TINY, "--out", tmp_path / "s", "--shard", "0/2", *CAPTURE)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert lines and all("drop --shard" in line for line in lines), done.stderr[-3000:]
