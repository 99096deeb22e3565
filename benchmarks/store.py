"""What does the capture store cost, in bytes, fidelity, speed and training time?

    python -m benchmarks.store                   # 200 prompts per domain
    python -m benchmarks.store --per-domain 60   # quicker

The result goes to benchmarks/results/store.json (`python -m benchmarks.results_md` renders it
into RESULTS.md) unless `--json` names another file.

Teachers: the specialists world's gemma, gptoss and qwen (a world under
`.cache/polydistill/worlds` that has them; else the tiny test world is built). Prompts: the first
`--per-domain` training prompts of arithmetic, facts and strings; every teacher answers each
greedily (16 tokens at most) and reads every distinct answer, as `polydistill capture` does
(one pass at k = 128; smaller k are its first columns).

- Bytes per position per teacher at k in {16, 64, 128}: the compressed Parquet bytes of the
  teacher's columns (top-k, log-prob codes, row log-sum-exp, rendering ids, token log-probs) over
  the positions it scored, beside a plain store of the same rows (int32 ids + float32 log-probs,
  Parquet zstd). Shared columns (prompts, answers, authors) are listed apart.
- KL(teacher's full distribution || reconstruction), float64, mean over every scored position:
  the reconstruction is the decoded top-k plus the remaining mass (at least k * 2^-24, what
  float32 log-probs resolve) spread evenly over the other ids; `exact top-k` is the same with the
  teacher's float32 top-k, so the difference is the codec's; `codec alone` compares the decoded
  top-k + tail with the exact top-k + tail; `own answers in its domain` keeps the positions of
  the answers the teacher wrote to its own domain's prompts.
- Write: building and writing the shards (positions of all teachers per second). Read: opening
  the store (checksums, index) and decoding every teacher's rows of every shard to arrays, and
  the `StoreTeacher` path to `TeacherRows` (`gather_readings` on store teachers); one thread.
- Training: a student (qwen family, the world teachers' size, student tokenizer) on the targets
  `student_targets` builds from the 3-teacher store (evidence fusion, top-32, forward KL through
  `distillation_loss`) against `sft_loss` on the same chosen answers: same batches and tokens.
  Arms alternate over rounds; step time is the best round's wall time over its steps.
"""

import argparse
import copy
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from benchmarks import results_md
from polydistill.store.cached import open_store, store_teachers
from polydistill.store.capture import merge_store, start_store, write_block
from polydistill.store.manifest import capture_plan
from polydistill.teachers.local import LocalTeacher, local_teacher
from polydistill.teachers.protocol import TeacherRows
from polydistill.teachers.readings import Candidate, Readings, gather_readings

SECTION = "## Capture store (benchmarks/store.py)"
NAMES = ("gemma", "gptoss", "qwen")
DOMAINS = ("arithmetic", "facts", "strings")
KS = (16, 64, 128)
# The targets at k = 64: bytes per position per teacher, and mean KL in nats.
BYTES_TARGET, KL_TARGET = 150, 1e-3
BLOCK, MAX_NEW_TOKENS = 256, 16


def world_root() -> tuple[Path, str]:
    """The cached world of examples/specialists.yaml, else the newest cached world with the
    three teachers, else the tiny test world built for this run."""
    from polydistill.config import load_config
    from polydistill.world.build import build_world, world_key

    cache = Path(".cache/polydistill/worlds")
    key = world_key(load_config(Path("examples/specialists.yaml")))
    if (cache / key / "world.json").is_file():
        return cache / key, f"The cached examples/specialists.yaml world ({key})"
    records = sorted(cache.glob("*/world.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for record in records:
        names = {t["name"] for t in json.loads(record.read_text())["teachers"]}
        if set(NAMES) <= names:
            return record.parent, f"The newest cached specialists world ({record.parent.name})"

    scratch = Path(tempfile.mkdtemp(prefix="store-bench-world-"))
    cfg = load_config(Path("tests/tiny.yaml"), [f"world.cache_dir={scratch}", "threads=2"])
    return build_world(cfg).root, "The tiny test world (tests/tiny.yaml)"


def world_prompts(root: Path, per_domain: int) -> tuple[list[str], list[str]]:
    prompts, domains = [], []
    for domain in DOMAINS:
        lines = (root / "data" / f"{domain}.train.jsonl").read_text().splitlines()[:per_domain]
        prompts += [json.loads(line)["prompt"] for line in lines]
        domains += [domain] * len(lines)
    return prompts, domains


def sliced(rows: TeacherRows, k: int) -> TeacherRows:
    return TeacherRows(
        rows.ids, rows.start, rows.top_ids[:, :k], rows.top_logprobs[:, :k], rows.token_logprobs
    )


def block_readings(readings: Readings, first: int, size: int, k: int) -> Readings:
    """The readings of prompts [first, first + size), prompt indices local, rows cut to k."""
    chosen = [
        c for c, cand in enumerate(readings.candidates) if first <= cand.prompt < first + size
    ]
    candidates = [
        Candidate(cand.prompt - first, cand.text, cand.authors)
        for cand in (readings.candidates[c] for c in chosen)
    ]
    rows = {n: [sliced(r[c], k) for c in chosen] for n, r in readings.rows.items()}
    return Readings(candidates, [], rows)


def write_store(out: Path, teachers, prompts, readings: Readings, k: int) -> float:
    """Write a complete store of `readings` cut to k; returns the seconds spent on the shards."""
    plan = capture_plan(
        teachers,
        prompts,
        top_k=k,
        temperature=1.0,
        samples=1,
        max_new_tokens=MAX_NEW_TOKENS,
        seed=0,
        block_size=BLOCK,
    )
    start_store(out, teachers, plan)
    blocks = [block_readings(readings, b * BLOCK, BLOCK, k) for b in range(plan["blocks"])]
    started = time.perf_counter()
    for b, part in enumerate(blocks):
        write_block(out, plan, b, part, prompts[b * BLOCK : (b + 1) * BLOCK])
    seconds = time.perf_counter() - started
    merge_store(out)
    return seconds


def column_bytes(out: Path) -> dict[str, int]:
    """Compressed bytes per column over all shards."""
    sizes: dict[str, int] = {}
    for path in sorted((out / "shards").glob("block-*.parquet")):
        meta = pq.ParquetFile(path).metadata
        for g in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                column = meta.row_group(g).column(c)
                name = column.path_in_schema
                sizes[name] = sizes.get(name, 0) + column.total_compressed_size
    return sizes


def plain_bytes(rows: list[TeacherRows]) -> int:
    """The same top-k rows as int32 ids and float32 log-probs in Parquet with zstd."""
    ids = np.concatenate([r.top_ids for r in rows]).astype(np.int32)
    logprobs = np.concatenate([r.top_logprobs for r in rows]).astype(np.float32)
    k = ids.shape[1]
    table = pa.table(
        {
            "ids": pa.FixedSizeListArray.from_arrays(pa.array(ids.reshape(-1)), k),
            "logprobs": pa.FixedSizeListArray.from_arrays(pa.array(logprobs.reshape(-1)), k),
        }
    )
    path = Path(tempfile.mkstemp(suffix=".parquet")[1])
    pq.write_table(table, path, compression="zstd")
    size = path.stat().st_size
    path.unlink()
    return size


def full_distributions(teacher: LocalTeacher, prompts, answers) -> list[np.ndarray]:
    """Each answer's full next-token log-probs `[positions, V]` (float32), dense by id."""
    vocab = len(teacher.tokenizer)
    out = []
    for rows in teacher.score(prompts, answers, top_k=vocab, temperature=1.0):
        dense = np.empty(rows.top_ids.shape, dtype=np.float32)
        np.put_along_axis(dense, rows.top_ids, rows.top_logprobs, axis=1)
        out.append(dense)
    return out


def kl_to_reconstruction(full: np.ndarray, ids: np.ndarray, logprobs: np.ndarray) -> np.ndarray:
    """KL(full || top-k with the rest of the mass spread evenly), float64, per position.

    Float32 log-probs cannot resolve a tail below about k * 2^-24 (their sum's rounding), so the
    reconstruction keeps at least that much in the tail and scales the top-k to the rest; a tail
    of 0 would make every unlisted id impossible and the KL unbounded."""
    p_log = full.astype(np.float64)
    vocab, k = full.shape[1], ids.shape[1]
    kept = np.exp(logprobs.astype(np.float64))
    tail = np.maximum(1.0 - kept.sum(1), k * 2.0**-24)
    top_log = np.log(kept * ((1.0 - tail) / kept.sum(1))[:, None])
    q_log = np.repeat(np.log(tail / max(vocab - k, 1))[:, None], vocab, axis=1)
    np.put_along_axis(q_log, ids, top_log, axis=1)
    return (np.exp(p_log) * (p_log - q_log)).sum(1)


def kl_topk_tail(exact: np.ndarray, decoded: np.ndarray) -> np.ndarray:
    """KL over the k ids plus one tail bucket (what the codec alone changes), float64."""
    p, q = np.exp(exact.astype(np.float64)), np.exp(decoded.astype(np.float64))
    p_tail = np.clip(1 - p.sum(1), 1e-300, None)
    q_tail = np.clip(1 - q.sum(1), 1e-300, None)
    return (p * np.log(p / q)).sum(1) + p_tail * np.log(p_tail / q_tail)


def fidelity(
    teachers, readings: Readings, prompts, domains, homes: dict[str, list[str]], stores
) -> dict:
    """Mean and max KL per teacher and k, for the store's rows and the exact truncation."""
    texts = [c.text for c in readings.candidates]
    asked = [prompts[c.prompt] for c in readings.candidates]
    out: dict = {}
    for teacher in teachers:
        full = full_distributions(teacher, asked, texts)
        for k, root in stores.items():
            stored = store_teachers(open_store(root), {teacher.name: teacher.fingerprint()})[0]
            decoded = stored.score(asked, texts, top_k=k, temperature=1.0)
            codec = np.concatenate(
                [
                    kl_to_reconstruction(f, r.top_ids, r.top_logprobs)
                    for f, r in zip(full, decoded, strict=True)
                ]
            )
            exact = np.concatenate(
                [
                    kl_to_reconstruction(f, r.top_ids[:, :k], r.top_logprobs[:, :k])
                    for f, r in zip(full, readings.rows[teacher.name], strict=True)
                ]
            )
            alone = np.concatenate(
                [
                    kl_topk_tail(e.top_logprobs[:, :k], r.top_logprobs)
                    for e, r in zip(readings.rows[teacher.name], decoded, strict=True)
                ]
            )
            home = np.concatenate(
                [
                    np.full(
                        len(r.top_ids),
                        domains[c.prompt] in homes[teacher.name]
                        and any(a == teacher.name for a, _ in c.authors),
                    )
                    for c, r in zip(readings.candidates, decoded, strict=True)
                ]
            )
            out[f"{teacher.name}/k{k}"] = {
                "home_domain_kl_mean": float(codec[home].mean()),
                "codec_kl_mean": float(alone.mean()),
                "codec_kl_max": float(alone.max()),
                "kl_mean": float(codec.mean()),
                "kl_max": float(codec.max()),
                "truncation_kl_mean": float(exact.mean()),
                "positions": len(codec),
            }
    return out


def best_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def read_speed(root: Path, prompts, repeats: int = 7) -> dict:
    """Opening the store (index, tokenizers) once; then positions per second reading every
    shard of every teacher (checksum, Parquet, decode to arrays), and through `StoreTeacher`."""
    store = open_store(root)
    expected = {n: t["fingerprint"] for n, t in store.manifest["teachers"].items()}
    teachers = store_teachers(store, expected)
    shards = range(len(store.manifest["shards"]))
    positions = sum(len(t.block(s).top_ids) for t in teachers for s in shards)

    def decode_all() -> None:
        store.verified.clear()  # every repeat checks the checksums again
        for teacher in teachers:
            for shard in shards:
                teacher.block(shard)

    def decode_one(teacher, shard: int) -> None:
        store.verified.discard(shard)
        teacher.block(shard)

    # On busy shared cores a pass of 50 ms is rarely left alone; one shard of one teacher
    # (a few ms) often is, so the sum of their best times is the cost on an idle core.
    piecewise = sum(
        best_seconds(lambda t=t, s=s: decode_one(t, s), repeats) for t in teachers for s in shards
    )

    def as_rows() -> None:
        gather_readings(
            teachers,
            prompts,
            samples=1,
            max_new_tokens=MAX_NEW_TOKENS,
            seed=0,
            top_k=store.manifest["top_k"],
            temperature=1.0,
        )

    open_s = best_seconds(lambda: store_teachers(open_store(root), expected), 3)
    return {
        "positions": positions,
        "open_seconds": open_s,
        "decode_positions_per_s": positions / best_seconds(decode_all, repeats),
        "decode_piecewise_positions_per_s": positions / piecewise,
        "teacher_rows_positions_per_s": positions / best_seconds(as_rows, repeats),
        "repeats": repeats,
    }


def training_data(root: Path, store_dir: Path, prompts, domains):
    """The student's fused rows from the 3-teacher store, and the one-off seconds it took."""
    from transformers import AutoTokenizer

    from polydistill.student.targets import example_weights, student_targets

    tokenizer = AutoTokenizer.from_pretrained(root / "tokenizers" / "student")
    started = time.perf_counter()
    store = open_store(store_dir)
    teachers = store_teachers(
        store, {n: t["fingerprint"] for n, t in store.manifest["teachers"].items()}
    )
    readings = gather_readings(
        teachers,
        prompts,
        samples=1,
        max_new_tokens=MAX_NEW_TOKENS,
        seed=0,
        top_k=32,
        temperature=1.0,
    )
    read_seconds = time.perf_counter() - started
    weights = example_weights("evidence", NAMES, readings, prompts, domains, temperature=0.05)
    started = time.perf_counter()
    data, _ = student_targets(
        readings,
        teachers,
        tokenizer,
        prompts,
        domains,
        strategy="evidence",
        weights=weights,
        temperature=0.05,
        top_k=32,
        completions_per_prompt=1,
    )
    return (
        data,
        tokenizer,
        {"store_read_s": read_seconds, "targets_s": time.perf_counter() - started},
    )


def step_times(data, tokenizer, steps: int, rounds: int, batch_size: int) -> dict:
    """Seconds per step of SFT and of distillation on the same batches, arms alternating."""
    from polydistill.config import ModelSize
    from polydistill.student.batches import distillation_batches
    from polydistill.student.loss import distillation_loss
    from polydistill.train import sft_loss, train
    from polydistill.world.architectures import build_model

    size = ModelSize(
        hidden_size=128, layers=3, heads=2, kv_heads=1, head_dim=64, intermediate_size=512
    )
    fresh = build_model("qwen", size, tokenizer, 0)
    batches = distillation_batches(data, tokenizer.pad_token_id, batch_size, 0)
    arms = {
        "sft": sft_loss,
        "distill": distillation_loss("forward_kl", 0.5, 1.0, 0.0, len(tokenizer)),
    }
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(rounds):
        for name, loss_fn in arms.items():
            model = copy.deepcopy(fresh)
            started = time.perf_counter()
            train(model, batches, loss_fn, steps=steps, lr=1e-3, warmup_steps=1)
            times[name].append((time.perf_counter() - started) / steps)
    best = {name: min(values) for name, values in times.items()}
    ratios = [d / s for d, s in zip(times["distill"], times["sft"], strict=True)]
    return {
        "steps": steps,
        "batch_size": batch_size,
        "rounds": times,
        "sft_step_s": best["sft"],
        "distill_step_s": best["distill"],
        "ratio_best": best["distill"] / best["sft"],
        "ratio_median": statistics.median(ratios),
        "target_positions": len(data.targets),
    }


def measure(args: argparse.Namespace, work: Path) -> dict:
    root, world = world_root()
    prompts, domains = world_prompts(root, args.per_domain)
    teachers = [local_teacher(n, root / "teachers" / n, 200) for n in NAMES]
    record = json.loads((root / "world.json").read_text())
    homes = {t["name"]: t["domains"] for t in record["teachers"]}
    started = time.perf_counter()
    readings = gather_readings(
        teachers,
        prompts,
        samples=1,
        max_new_tokens=MAX_NEW_TOKENS,
        seed=0,
        top_k=max(KS),
        temperature=1.0,
    )
    capture_seconds = time.perf_counter() - started
    stores, sizes = {}, {}
    for k in KS:
        stores[k] = work / f"k{k}"
        write_s = write_store(stores[k], teachers, prompts, readings, k)
        columns = column_bytes(stores[k])
        manifest = json.loads((stores[k] / "manifest.json").read_text())
        positions = {n: sum(s["positions"][n] for s in manifest["shards"]) for n in NAMES}
        sizes[k] = {
            "write_positions_per_s": sum(positions.values()) / write_s,
            "shared_bytes": sum(v for c, v in columns.items() if "/" not in c),
            "teachers": {
                n: {
                    "positions": positions[n],
                    "bytes_per_position": sum(
                        v for c, v in columns.items() if c.startswith(f"{n}/")
                    )
                    / positions[n],
                    "plain_bytes_per_position": plain_bytes(
                        [sliced(r, k) for r in readings.rows[n]]
                    )
                    / positions[n],
                    "columns": {
                        c: v / positions[n] for c, v in columns.items() if c.startswith(f"{n}/")
                    },
                }
                for n in NAMES
            },
        }
    data, tokenizer, one_off = training_data(root, stores[64], prompts, domains)
    return {
        "world": world,
        "prompts": len(prompts),
        "candidates": len(readings.candidates),
        "capture_seconds_k128": capture_seconds,
        "sizes": sizes,
        "kl": fidelity(teachers, readings, prompts, domains, homes, stores),
        "read": read_speed(stores[64], prompts),
        "training": {**step_times(data, tokenizer, args.steps, args.rounds, 32), **one_off},
    }


def markdown(result: dict) -> str:
    """The section for one run (`result` as `main` saves it)."""
    lines = [
        SECTION,
        "",
        results_md.environment_lines(result),
        f"{results_md.load_sentence(result)} {result['world']}, {result['prompts']} prompts, "
        f"{result['candidates']} distinct answers, every teacher reading every answer.",
        "",
        "| teacher | k | store B/position | plain int32+float32 zstd B/position | mean KL store "
        "(nats) | max KL store | mean KL exact top-k | codec alone: mean KL, top-k + tail | "
        "mean KL store, its own answers in its domain |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for k in KS:
        for n in NAMES:
            size, kl = result["sizes"][str(k)]["teachers"][n], result["kl"][f"{n}/k{k}"]
            lines.append(
                f"| {n} | {k} | {size['bytes_per_position']:.1f} | "
                f"{size['plain_bytes_per_position']:.1f} | {kl['kl_mean']:.2e} | "
                f"{kl['kl_max']:.2e} | {kl['truncation_kl_mean']:.2e} | "
                f"{kl['codec_kl_mean']:.2e} | {kl['home_domain_kl_mean']:.2e} |"
            )
    lines += ["", fidelity_sentence(result), "", speed_sentence(result)]
    lines += ["", training_sentence(result["training"])]
    return "\n".join(lines) + "\n"


def fidelity_sentence(result: dict) -> str:
    """Size and fidelity at k = 64 against the targets, and how much of the KL is truncation."""
    at64 = {n: (result["sizes"]["64"]["teachers"][n], result["kl"][f"{n}/k64"]) for n in NAMES}
    overall_ok = [n for n, (_, kl) in at64.items() if kl["kl_mean"] <= KL_TARGET]
    missed = [
        f"{n} {kl['truncation_kl_mean']:.1e} of the store's {kl['kl_mean']:.1e} "
        f"({kl['truncation_kl_mean'] / kl['kl_mean']:.0%})"
        for n, (_, kl) in at64.items()
        if n not in overall_ok
    ]
    truncation = (
        f"; where it misses, the exact top-64 alone has a mean KL of {', '.join(missed)}"
        if missed
        else ""
    )
    return (
        "At k = 64: largest store size "
        f"{max(size['bytes_per_position'] for size, _ in at64.values()):.1f} B/position "
        f"(target {BYTES_TARGET}); mean KL on each teacher's own answers in its domain at most "
        f"{max(kl['home_domain_kl_mean'] for _, kl in at64.values()):.1e} nats (target "
        f"{KL_TARGET:g}); over every position the target holds for "
        f"{', '.join(overall_ok) or 'none'}{truncation}. The codec alone adds at most "
        f"{max(kl['codec_kl_mean'] for _, kl in at64.values()):.1e} nats."
    )


def speed_sentence(result: dict) -> str:
    read = result["read"]
    write = result["sizes"]["64"]["write_positions_per_s"]
    whole, piecewise = read["decode_positions_per_s"], read["decode_piecewise_positions_per_s"]
    return (
        f"Throughput at k = 64, one thread, positions of all teachers ({read['positions']:,}), "
        f"best of {read['repeats']}: write (encode, compress, fsync, rename) {write:,.0f}/s; "
        f"read (checksum, Parquet, decode every teacher's rows to arrays) {whole:,.0f}/s for "
        f"the whole pass ({read['positions'] / whole * 1000:.0f} ms), {piecewise:,.0f}/s "
        f"summing each shard's best time ({piecewise / whole:.2f}x the whole pass's rate); "
        "through `StoreTeacher` to `TeacherRows` "
        f"(`gather_readings` on store teachers) {read['teacher_rows_positions_per_s']:,.0f}/s; "
        f"opening the store (manifest, index of answers, three tokenizers) "
        f"{read['open_seconds']:.3f} s once."
    )


def training_sentence(train: dict) -> str:
    return (
        f"Training from the 3-teacher store (k = 64 stored, top-32 fused targets, batch "
        f"{train['batch_size']}, {train['steps']} steps per round, rounds alternating): "
        f"distillation {train['distill_step_s'] * 1000:.0f} ms/step against SFT "
        f"{train['sft_step_s'] * 1000:.0f} ms/step on the same batches: "
        f"**{train['ratio_best']:.2f}x** (best rounds; median of per-round ratios "
        f"{train['ratio_median']:.2f}x). One-off before training: reading the store "
        f"{train['store_read_s']:.2f} s, projecting and fusing the targets "
        f"{train['targets_s']:.2f} s."
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--json", type=Path, help="write the result here instead of benchmarks/results/store.json"
    )
    parser.add_argument("--per-domain", type=int, default=200)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    command = "python -m benchmarks.store" + "".join(
        f" --{name.replace('_', '-')} {getattr(args, name)}"
        for name in ("per_domain", "steps", "rounds")
        if getattr(args, name) != parser.get_default(name)
    )
    result = {"command": command, "environment": results_md.environment(("pyarrow",))}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    pa.set_cpu_count(1)
    work = Path(tempfile.mkdtemp(prefix="store-bench-"))
    try:
        result |= measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = json.loads(json.dumps(result))  # k keys as strings, as in the file
    path = results_md.save("store", result, args.json)
    print(markdown(result))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
