"""Does memory stay flat in the number of prompts? Peak memory of capturing a store and of
training from it, at 10,000 and 100,000 prompts.

    python -m benchmarks.memory                       # 10,000 and 100,000 prompts
    python -m benchmarks.memory --sizes 1000 10000    # quicker

The result goes to benchmarks/results/memory.json (`python -m benchmarks.results_md` renders it
into RESULTS.md) unless `--json` names another file.

Each size runs the real command lines in child processes, on `examples/my-run.yaml` with tiny
random checkpoints in place of its paths (as tests/test_real_run.py does): a Qwen3-architecture
teacher with a Qwen-style byte-level tokenizer, a gpt-oss-architecture teacher (two experts)
with an o200k-style one, so every row is projected across tokenizers, and a student started from
a Qwen3 checkpoint. The prompts are a generated JSONL file of N distinct short questions
("What is 417 plus 23?"); 8 test prompts in a file of their own.

1. `polydistill capture` of the N training prompts (each teacher answers greedily, 4 tokens at
   most, and reads both answers at top-8, `student.top_k`), 256 prompts per shard.
2. `polydistill run ... student.store=STORE`: readings from the store, every prompt's fused
   top-8 rows, a fixed 100 training steps of 32 rows, evaluation, export and lineage. The steps
   are fixed so that 100,000 prompts stay a few minutes of training: a step's memory is one
   batch's whatever the prompts, and what could grow with them (the readings and rows of every
   prompt, built before the first step, and the index the batches draw from) is built for all
   N prompts either way.

Memory: the child's peak resident set (`ru_maxrss` from `os.wait4`, the high-water mark of the
process, including everything torch and Arrow allocate outside Python), and the same of a
child that only imports what the commands import (torch, transformers, polydistill's pipeline,
store and student modules): the growth that matters is of the peak above that baseline. The
store's size on disk, and what its readings take decoded (the scored positions of both teachers
times top-8 times 12 bytes), are reported beside it: what memory would hold if they were kept.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import results_md

SECTION = "## Memory in the number of prompts (benchmarks/memory.py)"
EXAMPLE = Path(__file__).parents[1] / "examples" / "my-run.yaml"
SIZES = (10_000, 100_000)
STEPS, BATCH = 100, 32
TARGET = 0.10
IMPORTS = (
    "torch, transformers, polydistill.cli, polydistill.pipeline, polydistill.store.capture, "
    "polydistill.store.blocks, polydistill.student.recipe, polydistill.teachers.local"
)
CORPUS = [
    "What is 417 plus 23? It is 440.",
    "The student learns from two teachers with their own vocabularies.",
    "Numbers like 12, 345 and 6789 are split into digits by some tokenizers.",
    "Where does the river go? It flows to the sea, past the old mill.",
] * 20


def tiny_model(model_type: str, vocab_size: int, seed: int):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    options = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "max_position_embeddings": 128,
    }
    if model_type == "gpt_oss":
        options |= {
            "layer_types": ["sliding_attention", "full_attention"],
            "sliding_window": 8,
            "num_local_experts": 2,
            "num_experts_per_tok": 1,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        }
    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, vocab_size=vocab_size, **options)
    return AutoModelForCausalLM.from_config(config).eval()


def checkpoints(root: Path) -> dict[str, Path]:
    """The two teachers and the student's start, saved as Hugging Face folders."""
    from polydistill.world.tokenizers import train_tokenizer

    qwen, gptoss = train_tokenizer("qwen", CORPUS, 400), train_tokenizer("gpt-oss", CORPUS, 1500)
    folders = {}
    for name, arch, tokenizer, seed in [
        ("qwen", "qwen3", qwen, 1),
        ("gptoss", "gpt_oss", gptoss, 2),
        ("student", "qwen3", qwen, 3),
    ]:
        folders[name] = root / name
        tiny_model(arch, len(tokenizer), seed).save_pretrained(folders[name])
        tokenizer.save_pretrained(folders[name])
    return folders


def write_prompts(path: Path, n: int) -> Path:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"What is {i % 1000} plus {i // 1000}?"}) + "\n")
    return path


def write_test(path: Path) -> Path:
    with path.open("w") as f:
        for a in range(8):
            f.write(json.dumps({"prompt": f"Add {a} and 2.", "reference": str(a + 2)}) + "\n")
    return path


def overrides(root: Path, folders: dict[str, Path], prompts: Path) -> list[str]:
    return [
        f"data.train={prompts}",
        f"data.test=[{root / 'test.jsonl'}]",
        "data.fractions={validation: 0.0, test: 0.0}",
        f"teachers[0].path={folders['qwen']}",
        f"teachers[1].path={folders['gptoss']}",
        "teachers[0].dtype=float32",
        "teachers[1].dtype=float32",
        f"student.init={{checkpoint: {folders['student']}}}",
        f"student.train={{steps: {STEPS}, batch_size: {BATCH}, lr: 1.0e-3, warmup_steps: 1}}",
        "student.top_k=8",
        "student.checkpoint_every=0",
        "eval={batch_size: 256, max_new_tokens: 4}",
        "threads=1",
    ]


def child_peak(command: list[str], log: Path) -> dict:
    """Run `command` to its end; its peak resident set (bytes) and wall time."""
    started = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with log.open("w") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command[:4])} failed:\n{log.read_text()[-3000:]}")
    return {"peak_bytes": usage.ru_maxrss * 1024, "seconds": time.perf_counter() - started}


def folder_bytes(folder: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in folder.glob(pattern) if p.is_file())


def measure_size(root: Path, folders: dict[str, Path], n: int) -> dict:
    here = root / str(n)
    here.mkdir()
    settings = overrides(root, folders, write_prompts(here / "prompts.jsonl", n))
    cli = [sys.executable, "-m", "polydistill"]
    store, run = here / "store", here / "run"
    capture = child_peak(
        [*cli, "capture", str(EXAMPLE), "--out", str(store), *settings], here / "capture.log"
    )
    training = child_peak(
        [*cli, "run", str(EXAMPLE), "--out", str(run), *settings, f"student.store={store}"],
        here / "run.log",
    )
    capture["store_bytes"] = folder_bytes(store / "shards", "*.parquet")
    manifest = json.loads((store / "manifest.json").read_text())
    positions = sum(sum(s["positions"].values()) for s in manifest["shards"])
    # what the readings take as decoded arrays (int64 ids, float32 log-probs per top-k entry)
    capture["readings_bytes"] = positions * manifest["top_k"] * 12
    shutil.rmtree(here)
    return {"prompts": n, "capture": capture, "training": training}


def measure(sizes: list[int], work: Path) -> dict:
    (work / "models").mkdir()
    folders = checkpoints(work / "models")
    write_test(work / "test.jsonl")
    baseline = child_peak([sys.executable, "-c", f"import {IMPORTS}"], work / "imports.log")
    runs = [measure_size(work, folders, n) for n in sizes]
    base = baseline["peak_bytes"]
    growth = {}
    for stage in ("capture", "training"):
        first, last = runs[0][stage]["peak_bytes"], runs[-1][stage]["peak_bytes"]
        growth[stage] = {
            "peak": last / first - 1,
            "above_imports": (last - base) / (first - base) - 1,
        }
    return {"baseline": baseline, "runs": runs, "growth": growth, "steps": STEPS, "batch": BATCH}


def mib(value: float) -> str:
    return f"{value / 2**20:,.0f}"


def markdown(result: dict) -> str:
    runs, growth = result["runs"], result["growth"]
    base = result["baseline"]["peak_bytes"]
    lines = [
        *results_md.heading(SECTION, result),
        "",
        "Peak resident memory (`ru_maxrss` of the child process, MiB) of `polydistill capture` "
        "of N prompts into a store with two tiny teachers, and of `polydistill run` training a "
        f"tiny student from that store ({result['steps']} steps of {result['batch']} rows, "
        "every prompt's rows fused first); `above imports` subtracts the peak of a child that "
        f"only imports the same modules ({mib(base)} MiB). Beside them, the store's shards on disk "
        "and its readings decoded (positions x top-8 x 12 bytes): what memory would hold if "
        "they were kept.",
        "",
        "| prompts | capture peak | above imports | store on disk | readings decoded | time "
        "| training peak | above imports | time |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        c, t = run["capture"], run["training"]
        lines.append(
            f"| {run['prompts']:,} | {mib(c['peak_bytes'])} | {mib(c['peak_bytes'] - base)} "
            f"| {mib(c['store_bytes'])} | {mib(c['readings_bytes'])} | {c['seconds']:.0f} s "
            f"| {mib(t['peak_bytes'])} | {mib(t['peak_bytes'] - base)} | {t['seconds']:.0f} s |"
        )
    first, last = runs[0]["prompts"], runs[-1]["prompts"]

    def verdict(stage: str, measure: str) -> str:
        value = growth[stage][measure]
        return f"{stage} {value:+.1%} ({'met' if value < TARGET else 'not met'})"

    extra = {
        stage: (runs[-1][stage]["peak_bytes"] - runs[0][stage]["peak_bytes"]) / (last - first)
        for stage in ("capture", "training")
    }
    held = runs[-1]["capture"]["readings_bytes"] - runs[0]["capture"]["readings_bytes"]
    lines += [
        "",
        f"From {first:,} to {last:,} prompts, against a target of under {TARGET:.0%}: the peak "
        f"grew **{verdict('capture', 'peak')}**, **{verdict('training', 'peak')}**; the peak "
        f"above the import baseline {verdict('capture', 'above_imports')}, "
        f"{verdict('training', 'above_imports')}: {extra['capture']:,.0f} and "
        f"{extra['training']:,.0f} bytes more per added prompt, while the readings grew "
        f"{held / (last - first):,.0f} bytes per prompt.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--json", type=Path, help="write the result here instead of benchmarks/results/memory.json"
    )
    parser.add_argument("--sizes", type=int, nargs=2, default=list(SIZES))
    args = parser.parse_args(argv)
    command = "python -m benchmarks.memory" + (
        f" --sizes {args.sizes[0]} {args.sizes[1]}" if args.sizes != list(SIZES) else ""
    )
    result = {"command": command, "environment": results_md.environment(("pyarrow",))}
    work = Path(tempfile.mkdtemp(prefix="memory-bench-"))
    try:
        result |= measure(args.sizes, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = results_md.save("memory", result, args.json)
    print(markdown(result))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
