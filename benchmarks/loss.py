"""How much memory and time does one distillation loss step take at real vocabulary sizes?

The step is: student hidden states `[tokens, 512]` and lm_head `[V, 512]` → generalized JSD
(β = 0.5) against a full-vocabulary teacher distribution → gradients of both, float32 on CPU.

    python -m benchmarks.loss                # V ∈ {151936, 201088, 262144} × {512, 2048}
    python -m benchmarks.loss --quick        # V = 151936, 512 tokens only
    python -m benchmarks.loss --json OUT.json --sizes 600:16   # elsewhere than the results

The result goes to benchmarks/results/loss.json (`python -m benchmarks.results_md` renders it
into RESULTS.md) unless `--json` names another file.

Implementations, each case in its own process:
- `polydistill_chunked`: `polydistill.losses.distill_loss` on k = V targets (the teacher's full
  log-softmax), fused with the lm_head;
- `polydistill_top64`: the same on the top-64 teacher tokens plus the tail bucket (the usual
  training targets; a different loss, so it has no error against the dense one);
- `dense_reference`: `polydistill.losses.divergence` on materialised logits, autograd;
- `trl_gkd`: TRL's `GKDTrainer.generalized_jsd_loss` on the same materialised logits, autograd;
- `trl_chunked`: TRL's `_chunked_divergence_loss` as `DistillationTrainer` calls it. It cannot take
  teacher logits or log-probs: it needs the teacher's hidden states and lm_head, so it gets a
  teacher hidden `[tokens, 512]` and lm_head `[V, 512]` whose product is exactly the teacher logits
  the others get, and its time includes projecting the teacher (as it does in training);
- `floor`: only the three lm_head products of a forward + backward (h Wᵀ, G W, Gᵀ h), chunked.

Peak memory is the peak resident set size of the case's process during the step minus its resident
set size just before (Linux `VmHWM` after resetting it through `/proc/self/clear_refs`), so it
includes the gradients the step returns. A case past `--memory-limit-gb` of address space or
`--timeout` seconds is recorded as "oom"/"timeout". `rel_err_vs_dense` compares the loss with the
dense reference's; `grad_rel_err_vs_dense` the gradients (hidden, and every 64th lm_head row).
"""

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import results_md
from polydistill.losses import default_memory_budget_mb

VOCABS = (151936, 201088, 262144)
TOKENS = (512, 2048)
HIDDEN = 512
BETA = 0.5
# The floor runs next to polydistill's cases, so that their ratio sees the same machine load.
IMPLS = (
    "floor", "polydistill_chunked", "polydistill_top64", "dense_reference", "trl_gkd",
    "trl_chunked", "float64_reference",
)  # fmt: skip
# The errors each case's loss and gradients are measured against.
REFERENCES = {"dense": "dense_reference", "float64": "float64_reference"}
TOP_K = 64
FLOOR_CHUNK_ROWS = 256
GRAD_ROW_STRIDE = 64
# The machine is shared: quick cases are repeated (best time, worst memory).
# Its load also changes over minutes: --rounds runs the grid again, so that a case is not timed
# only in a busy minute (the slow cases, over a minute, vary less in proportion).
MAX_REPEATS = 3
REPEAT_WITHIN_S = 20.0
REROUND_UNDER_MS = 60_000
SECTION = "## Loss step (benchmarks/loss.py)"


def make_inputs(impl: str, vocab: int, tokens: int, budget_mb: float | None = None) -> dict:
    """Seeded inputs, identical in every process; only those the implementation needs."""
    gen = torch.Generator().manual_seed(1234)
    scale = 3.0 / math.sqrt(HIDDEN)  # logits with a standard deviation of about 3
    hidden = torch.randn(tokens, HIDDEN, generator=gen)
    weight = torch.randn(vocab, HIDDEN, generator=gen) * scale
    teacher_hidden = torch.randn(tokens, HIDDEN, generator=gen)
    teacher_weight = torch.randn(vocab, HIDDEN, generator=gen) * scale
    inputs = {"hidden": hidden.requires_grad_(), "weight": weight.requires_grad_()}
    if impl == "trl_chunked":
        inputs |= {"teacher_hidden": teacher_hidden, "teacher_weight": teacher_weight}
    elif impl != "floor":
        teacher_logits = teacher_hidden @ teacher_weight.t()
        if impl == "float64_reference":
            inputs = {name: t.detach().double().requires_grad_() for name, t in inputs.items()}
            teacher_logits = teacher_logits.double()
        if impl.startswith("polydistill") or impl == "float64_reference":
            from polydistill.targets import targets_from_logits

            k = TOP_K if impl == "polydistill_top64" else None
            inputs["targets"] = targets_from_logits(teacher_logits, k)
            inputs["budget_mb"] = budget_mb
        else:
            inputs["teacher_logits"] = teacher_logits
    return inputs


def run_step(impl: str, inputs: dict) -> torch.Tensor | None:
    """One forward + backward; returns the loss (None for the floor)."""
    hidden, weight = inputs["hidden"], inputs["weight"]
    if impl == "floor":
        return _floor(hidden.detach(), weight.detach())
    if impl.startswith("polydistill") or impl == "float64_reference":
        from polydistill.losses import distill_loss

        loss = distill_loss(
            hidden, weight, inputs["targets"], "jsd", beta=BETA,
            memory_budget_mb=inputs["budget_mb"], compile=impl != "float64_reference",
        )  # fmt: skip
    elif impl == "dense_reference":
        from polydistill.losses import divergence

        loss = divergence(hidden @ weight.t(), inputs["teacher_logits"], "jsd", beta=BETA)
    elif impl == "trl_gkd":
        from trl.experimental.gkd import GKDTrainer

        logits = hidden @ weight.t()
        loss = GKDTrainer.generalized_jsd_loss(logits, inputs["teacher_logits"], beta=BETA)
    else:
        from trl.trainer.distillation_trainer import _chunked_divergence_loss

        tokens = hidden.shape[0]
        loss, _, _ = _chunked_divergence_loss(
            hidden[None], inputs["teacher_hidden"][None], weight, inputs["teacher_weight"],
            torch.ones(1, tokens, dtype=torch.long), beta=BETA,
        )  # fmt: skip
    loss.backward()
    return loss.detach()


def _floor(hidden: torch.Tensor, weight: torch.Tensor) -> None:
    grad_hidden = torch.empty_like(hidden)
    grad_weight = torch.zeros_like(weight)
    rows = min(FLOOR_CHUNK_ROWS, hidden.shape[0])
    buffer = torch.empty(rows, weight.shape[0])
    for start in range(0, hidden.shape[0], rows):
        chunk = hidden[start : start + rows]
        logits = buffer[: chunk.shape[0]]
        torch.mm(chunk, weight.t(), out=logits)
        torch.mm(logits, weight, out=grad_hidden[start : start + rows])
        grad_weight.addmm_(logits.t(), chunk)


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _release_free_memory() -> None:
    """Hand the allocator's free pages back to the system, so that the RSS before a step is the
    live data only: freed pages the allocator kept (from the warm-up or an earlier repeat) would
    otherwise be reused unseen and hide part of the step's peak, by a different amount per run."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def run_case(
    impl: str,
    vocab: int,
    tokens: int,
    grads_out: str,
    memory_limit_gb: float,
    budget_mb: float | None,
) -> dict:
    """The child process: limit memory, build inputs, warm up, measure one step."""
    limit = _status_kb("VmSize") * 1024 + int(memory_limit_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    record = {"impl": impl, "vocab": vocab, "tokens": tokens}
    try:
        # The warm-up also compiles polydistill's kernel, as a training run's first step does.
        warm = make_inputs(impl, vocab, 16, budget_mb)
        run_step(impl, warm)
        del warm
        inputs = make_inputs(impl, vocab, tokens, budget_mb)
        times, peaks = [], []
        while not times or (len(times) < MAX_REPEATS and sum(times) < REPEAT_WITHIN_S):
            inputs["hidden"].grad = inputs["weight"].grad = None
            _release_free_memory()
            before_kb = _status_kb("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            start = time.perf_counter()
            loss = run_step(impl, inputs)
            times.append(time.perf_counter() - start)
            peaks.append(_status_kb("VmHWM") - before_kb)
    except (RuntimeError, MemoryError) as error:
        if "memory" not in str(error).lower():
            raise
        return record | {"status": "oom", "peak_mb": None, "ms": None, "error": str(error)[:200]}
    record |= {"status": "ok", "peak_mb": round(max(peaks) / 1024, 1)}
    record |= {"ms": round(min(times) * 1000, 1), "repeats": len(times)}
    record["grads_mb"] = round((vocab + tokens) * HIDDEN * 4 / 2**20, 1)
    if impl.startswith("polydistill"):
        budget = default_memory_budget_mb(vocab, HIDDEN) if budget_mb is None else budget_mb
        record["budget_mb"] = round(budget, 1)
    record["loss"] = None if loss is None else float(loss)
    if "targets" in inputs:  # distill_loss ran: which full-vocabulary kernel (warm-up included)
        from polydistill.losses import full_vocab

        record["kernel_calls"] = dict(full_vocab.kernel_calls)
        record["compile_error"] = full_vocab.compile_error()
    if loss is not None:
        sampled_weight = inputs["weight"].grad[::GRAD_ROW_STRIDE].clone()
        torch.save({"hidden": inputs["hidden"].grad, "weight": sampled_weight}, grads_out)
    return record


def spawn_case(
    impl: str, vocab: int, tokens: int, grads_out: str, timeout: int, child_flags: list[str]
) -> dict:
    """Run one case in a fresh process; a crash, kill or timeout becomes the record's status."""
    command = [sys.executable, "-m", "benchmarks.loss", "--case", impl, str(vocab), str(tokens)]
    command += ["--grads-out", grads_out, *child_flags]
    record = {"impl": impl, "vocab": vocab, "tokens": tokens, "peak_mb": None, "ms": None}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return record | {"status": f"timeout (> {timeout} s)"}
    if done.returncode != 0:
        killed = done.returncode in (-9, 137)
        status = "oom (killed)" if killed else f"error: {done.stderr.strip()[-300:]}"
        return record | {"status": status}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["grads"] = grads_out if result.get("loss") is not None else None
    return result


def add_errors(records: list[dict]) -> None:
    """Relative errors of each case's loss and gradients (the norm-wise worst of hidden and
    sampled lm_head rows) against the dense reference's and the float64 reference's cases."""
    for name, reference_impl in REFERENCES.items():
        references = {(r["vocab"], r["tokens"]): r for r in records if r["impl"] == reference_impl}
        for record in records:
            reference = references.get((record["vocab"], record["tokens"]))
            errors = _errors(record, reference) if record["impl"] != "polydistill_top64" else None
            record[f"rel_err_vs_{name}"], record[f"grad_rel_err_vs_{name}"] = errors or (None, None)
    for record in records:
        record.pop("grads", None)


def _errors(record: dict, reference: dict | None) -> tuple[float, float] | None:
    if reference is None or reference.get("loss") is None or record.get("loss") is None:
        return None
    loss_error = abs(record["loss"] - reference["loss"]) / abs(reference["loss"])
    ours, theirs = torch.load(record["grads"]), torch.load(reference["grads"])
    grad_error = max(
        float((ours[k].double() - theirs[k].double()).norm() / theirs[k].double().norm())
        for k in theirs
    )
    return float(f"{loss_error:.3g}"), float(f"{grad_error:.3g}")


CASE_COLUMNS = (
    "vocab | tokens | impl | status | peak MB | of which gradients | ms | runs | "
    "loss err vs dense | grad err vs dense | loss err vs f64 | grad err vs f64"
)
RATIO_COLUMNS = (
    "vocab | tokens | mem / dense | mem / trl_chunked | time / floor | time / dense | "
    "time / trl_gkd | time / trl_chunked"
)


def markdown(result: dict) -> str:
    """The section for one run (`result` as `main` saves it)."""
    records = result["records"]
    budget = result.get("memory_budget_mb")
    lines = [
        SECTION,
        "",
        results_md.environment_lines(result),
        f"{results_md.load_sentence(result)} torch threads: {result['threads']}, float32 on "
        "the CPU.",
        "",
        "Generalized JSD (β = 0.5), hidden 512, float32, forward + backward from hidden states "
        "and lm_head to their gradients. peak_mb = peak RSS of the case's process during the "
        "step minus its RSS before (live data only: the allocator's free pages are handed back "
        "first); it includes the gradients the step returns (lm_head and hidden, the same for "
        "every implementation). polydistill's chunk budget is "
        + (
            "its default `default_memory_budget_mb` (a share of the lm_head gradient)"
            if budget is None
            else f"{budget:g} MB (`--memory-budget-mb`)"
        )
        + ". Times move with the machine's load: compare within a run. ms = best of `runs` "
        "(quick cases are repeated in their process and in later rounds). Errors are relative, of "
        "the loss and (norm-wise, worst of hidden and every "
        f"{GRAD_ROW_STRIDE}th lm_head row) of the gradients, against `dense_reference` (float32) "
        "and `float64_reference` (polydistill's loss in float64 on the same float32 inputs). "
        "Ratios are within this run.",
        "",
        f"| {CASE_COLUMNS} |",
        "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    errors = [f"{kind}_vs_{name}" for name in REFERENCES for kind in ("rel_err", "grad_rel_err")]
    for r in records:
        cells = [r["vocab"], r["tokens"], r["impl"], r.get("status", "")]
        cells += [_cell(r.get(key)) for key in ("peak_mb", "grads_mb", "ms", "repeats")]
        cells += [_cell(r.get(key)) for key in errors]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", kernel_line(records), "", *ratio_lines(records)]
    return "\n".join(lines) + "\n"


def kernel_line(records: list[dict]) -> str:
    """Which full-vocabulary kernel polydistill_chunked ran (compile may have fallen back)."""
    chunked = [r for r in records if r["impl"] == "polydistill_chunked" and "kernel_calls" in r]
    if not chunked:
        return "No polydistill_chunked case finished: no kernel to report."
    fell_back = [r for r in chunked if r["kernel_calls"]["eager"] or r.get("compile_error")]
    if not fell_back:
        calls = sum(r["kernel_calls"]["compiled"] for r in chunked)
        return (
            f"polydistill_chunked ran the compiled full-vocabulary kernel in all {calls} "
            f"kernel calls of its {len(chunked)} case(s), warm-up included."
        )
    sizes = ", ".join(f"{r['vocab']} x {r['tokens']}" for r in fell_back)
    errors = sorted({r.get("compile_error") or "compile not asked" for r in fell_back})
    return (
        f"polydistill_chunked ran the eager kernel (compile fell back) at {sizes}: "
        f"{'; '.join(errors)}. Its times there are not the compiled kernel's."
    )


def _cell(value) -> str:
    return "–" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def ratio_lines(records: list[dict]) -> list[str]:
    """Memory and time of polydistill_chunked relative to the others, per size."""
    by = {(r["impl"], r["vocab"], r["tokens"]): r for r in records}
    lines = [f"| {RATIO_COLUMNS} |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    sizes = sorted({(r["vocab"], r["tokens"]) for r in records})
    for vocab, tokens in sizes:
        ours = by.get(("polydistill_chunked", vocab, tokens), {})
        cells = [vocab, tokens]
        for other, key in [("dense_reference", "peak_mb"), ("trl_chunked", "peak_mb")]:
            cells.append(_ratio(ours.get(key), by.get((other, vocab, tokens), {}).get(key)))
        for other in ("floor", "dense_reference", "trl_gkd", "trl_chunked"):
            cells.append(_ratio(ours.get("ms"), by.get((other, vocab, tokens), {}).get("ms")))
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def _ratio(a, b) -> str:
    return "–" if a is None or b is None else f"{a / b:.3f}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--json", type=Path, help="write the result here instead of benchmarks/results/loss.json"
    )
    parser.add_argument("--quick", action="store_true", help="V=151936, 512 tokens only")
    parser.add_argument("--sizes", nargs="+", help="VOCAB:TOKENS pairs instead of the grid")
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per case")
    parser.add_argument("--memory-limit-gb", type=float, default=16.0, help="per case")
    parser.add_argument(
        "--memory-budget-mb", type=float, help="polydistill's chunk budget (default: its own)"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="run the grid again, cases under a minute only"
    )
    parser.add_argument("--case", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--grads-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return args


def sizes_of(args: argparse.Namespace) -> list[tuple[int, int]]:
    if args.sizes:
        return [(int(v), int(t)) for v, t in (size.split(":") for size in args.sizes)]
    if args.quick:
        return [(VOCABS[0], TOKENS[0])]
    return [(vocab, tokens) for tokens in TOKENS for vocab in VOCABS]


def _worth_repeating(record: dict) -> bool:
    return record["status"] == "ok" and record["ms"] < REROUND_UNDER_MS


def _merge(earlier: dict | None, record: dict) -> dict:
    """One case over several rounds: its best time, its worst memory, the first round's outputs."""
    if earlier is None or record["status"] != "ok":
        return earlier or record
    merged = earlier | {"ms": min(earlier["ms"], record["ms"])}
    merged["peak_mb"] = max(earlier["peak_mb"], record["peak_mb"])
    merged["repeats"] = earlier["repeats"] + record["repeats"]
    return merged


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.case:
        impl, vocab, tokens = args.case[0], int(args.case[1]), int(args.case[2])
        limits = (args.memory_limit_gb, args.memory_budget_mb)
        print(json.dumps(run_case(impl, vocab, tokens, args.grads_out, *limits)))
        return
    command = "python -m benchmarks.loss " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {"command": command.strip(), "environment": results_md.environment(("trl",))}
    result |= {"threads": torch.get_num_threads(), "memory_budget_mb": args.memory_budget_mb}
    result["records"] = measure(args)
    path = results_md.save("loss", result, args.json)
    print(f"wrote {path}")


def measure(args: argparse.Namespace) -> list[dict]:
    """Every case of the grid, `args.rounds` times, with their errors."""
    child_flags = ["--memory-limit-gb", str(args.memory_limit_gb)]
    if args.memory_budget_mb is not None:
        child_flags += ["--memory-budget-mb", str(args.memory_budget_mb)]
    records = {}
    with tempfile.TemporaryDirectory() as workdir:
        for round_ in range(args.rounds):
            for vocab, tokens in sizes_of(args):
                for impl in args.impls:
                    earlier = records.get((impl, vocab, tokens))
                    if earlier and not _worth_repeating(earlier):
                        continue
                    grads_out = str(Path(workdir) / f"{impl}-{vocab}-{tokens}-{round_}.pt")
                    record = spawn_case(impl, vocab, tokens, grads_out, args.timeout, child_flags)
                    print(json.dumps({k: v for k, v in record.items() if k != "grads"}), flush=True)
                    records[impl, vocab, tokens] = _merge(earlier, record)
        records = list(records.values())
        add_errors(records)
    return records


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
