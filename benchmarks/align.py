"""How fast are cross-tokenizer alignment and projection on real vocabularies, next to TRL GOLD?

    python -m benchmarks.align              # 512 / 4k / 16k tokens
    python -m benchmarks.align --quick      # 512 / 4k, fewer repeats

The result goes to benchmarks/results/align.json (`python -m benchmarks.results_md` renders it
into RESULTS.md) unless `--json` names another file.

Texts are prefixes of 512, 4,096 and 16,384 gpt-oss (o200k_harmony) tokens of one document that
interleaves Python standard-library source (English and code) with generated multilingual lines
(CJK, Arabic, Cyrillic, Devanagari, Hangul, numbers, emoji). Pairs: o200k_harmony -> Qwen3 and
Qwen3 -> o200k_harmony, both real vocabularies (`polydistill.world.real_vocab`). Every
implementation starts from the two tokenizations (token ids, and for TRL the `Encoding`s with
character offsets); the tokenizer call both need is timed on its own row:

- `polydistill-align`: byte length of every token from its id (`token_byte_lengths`, which also
  checks the round trip) and the chunks (`align_byte_lengths`);
- `polydistill-align+project`: the same plus `project` of the teacher's top-20 rows;
- `trl-gold-align`: TRL's `encode_with_byte_offsets` (character to byte offsets and their
  normalisation) on both sides, its tokenizer call served from the same encodings, then
  `ULDLoss._align_by_byte_offsets`; its groups are checked to equal polydistill's chunks;
- `tokenize`: the two fast-tokenizer encodes.

The teacher's top-20 rows come from a smoothed bigram model of the teacher's tokens fitted on
another part of the corpus: not a language model, but distributions of realistic shape (the
observed token usually among the top-k, mass on frequent continuations). The same rows give the
tail mass per teacher pair (all ordered pairs of Qwen3, o200k_harmony and the gemma-style
SentencePiece stand-in) on the 4k text. Also timed: building the vocabulary map with an empty
cache, and loading it from the disk cache. `ms` is the best of 9 samples per call, 27 for calls
under 20 ms (the machine is shared: the minimum is the cost without other processes' time
slices; the median is in the JSON), in one process, the implementations taking turns within each
round; a sample repeats a call until it lasts 20 ms.
"""

import argparse
import math
import os
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks import results_md
from polydistill.align import vocabmap
from polydistill.align.chunks import AlignedSequence, aligned_sequence
from polydistill.align.project import project, tail_share
from polydistill.align.tokenbytes import token_byte_lengths, vocab_bytes
from polydistill.world.real_vocab import REAL_TOKENIZERS, gemma_style_corpus, stdlib_lines

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
SECTION = "## Alignment (benchmarks/align.py)"
SIZES = (512, 4096, 16384)
TOP_K = 20
PAIRS = (("o200k_harmony", "qwen3"), ("qwen3", "o200k_harmony"))


def corpus(lines: int, seed: int, skip: int) -> str:
    """Standard-library lines interleaved with generated multilingual ones."""
    code = stdlib_lines(skip + lines)[skip:]
    other = gemma_style_corpus(len(code), seed=seed)
    return "\n".join(f"{a}\n{b}" for a, b in zip(code, other, strict=True))


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids


def bigram_rows(fit_ids: np.ndarray, vocab: int, ids: np.ndarray, k: int = TOP_K):
    """Top-k rows `[len(ids), k]` of a bigram model smoothed towards the unigram."""
    unigram = np.bincount(fit_ids, minlength=vocab) + 0.01
    unigram /= unigram.sum()
    frequent = set(np.argsort(-unigram)[: 4 * k].tolist())
    pairs, counts = np.unique(fit_ids[:-1] * vocab + fit_ids[1:], return_counts=True)
    beta, table = 5.0, {}
    for prev in np.unique(ids).tolist():
        lo, hi = np.searchsorted(pairs, [prev * vocab, (prev + 1) * vocab])
        seen = dict(
            zip((pairs[lo:hi] - prev * vocab).tolist(), counts[lo:hi].tolist(), strict=True)
        )
        cand = np.array(sorted(seen.keys() | frequent))
        count = np.array([seen.get(i, 0) for i in cand.tolist()], dtype=float)
        prob = (count + beta * unigram[cand]) / (count.sum() + beta)
        best = np.argsort(-prob)[:k]
        table[prev] = (cand[best], np.log(prob[best]))
    rows = [table[i] for i in ids.tolist()]
    return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])


def _calls_per_sample(run) -> int:
    """Enough back-to-back calls for a sample of >= 20 ms: a shorter one is either untouched or
    hit by a whole time slice of another process on a busy machine."""
    start = time.perf_counter()
    run()
    return max(1, math.ceil(0.02 / max(time.perf_counter() - start, 1e-6)))


def sample_ms(runs: dict, samples: int) -> dict:
    """Per run, its samples in ms per call: `samples` of them, three times as many for calls
    under 20 ms (cheap, and the most exposed to other processes). Runs take turns within every
    round (one with fewer samples sits the last rounds out), so load hits all alike."""
    calls = {name: _calls_per_sample(run) for name, run in runs.items()}
    wanted = {name: samples * (3 if calls[name] > 1 else 1) for name in runs}
    times: dict = {name: [] for name in runs}
    for round_ in range(max(wanted.values())):
        for name, run in runs.items():
            if round_ < wanted[name]:
                start = time.perf_counter()
                for _ in range(calls[name]):
                    run()
                times[name].append((time.perf_counter() - start) * 1000 / calls[name])
    return times


class CachedEncodings:
    """Stands in for a `tokenizers.Tokenizer` in TRL: encode_batch returns given encodings."""

    def __init__(self, backend, encodings: dict):
        self.pre_tokenizer, self.decoder = backend.pre_tokenizer, backend.decoder
        self._encodings = encodings

    def encode_batch(self, texts, add_special_tokens=False):
        return [self._encodings[t] for t in texts]


def _side(tokenizer, name: str, text: str) -> dict:
    backend = tokenizer.backend_tokenizer
    encoding = backend.encode(text, add_special_tokens=False)
    return {
        "backend": backend,
        "encoding": encoding,
        "ids": np.array(encoding.ids),  # what a training step already holds
        "table": vocab_bytes(tokenizer, name),
        "cached": CachedEncodings(backend, {text: encoding}),
    }


def _ours(text: str, sides: dict, names: tuple[str, str]) -> AlignedSequence:
    lengths = [token_byte_lengths(sides[n]["table"], sides[n]["ids"], text, n) for n in names]
    ids = [sides[n]["ids"] for n in names]
    return aligned_sequence(text, *ids, 0, 0, *lengths, ends=False)


def prepare_pair(tokenizers, names: tuple[str, str], text: str, fit: dict):
    """The four implementations for one pair and text, ready to time, and facts about it."""
    from trl.experimental.gold.gold_trainer import ULDLoss
    from trl.experimental.utils import encode_with_byte_offsets

    sides = {name: _side(tokenizers[name], name, text) for name in names}
    teacher, student = names
    vmap = vocabmap.vocab_map(tokenizers[teacher], tokenizers[student], teacher)
    top, logprobs = bigram_rows(fit[teacher], len(vmap.teacher), sides[teacher]["ids"])

    def trl():
        offsets = [encode_with_byte_offsets(sides[n]["cached"], [text])[0][1] for n in names]
        return ULDLoss._align_by_byte_offsets(offsets[1], offsets[0])  # (student, teacher)

    def tokenize():
        for name in names:
            sides[name]["backend"].encode(text, add_special_tokens=False)

    chunks = _ours(text, sides, names).chunks
    student_groups, teacher_groups = trl()
    same = [g[0] for g in teacher_groups] == chunks.teacher[:-1].tolist() and [
        g[0] for g in student_groups
    ] == chunks.student[:-1].tolist()
    runs = {
        "polydistill-align": lambda: _ours(text, sides, names),
        "polydistill-align+project": lambda: project(
            _ours(text, sides, names), top, logprobs, vmap
        ),
        "trl-gold-align": trl,
        "tokenize": tokenize,
    }
    facts = {
        "pair": f"{teacher}->{student}",
        "teacher_tokens": len(sides[teacher]["ids"]),
        "student_tokens": len(sides[student]["ids"]),
        "chunks": len(chunks),
        "same_chunks_as_trl": same,
    }
    return runs, facts


def vocab_map_records(tokenizers) -> list[dict]:
    """Build time with an empty cache, then load time from the disk cache."""
    records = []
    for teacher, student in PAIRS:
        tables = (
            vocab_bytes(tokenizers[teacher], teacher),
            vocab_bytes(tokenizers[student], student),
        )
        timings = {}
        for impl, use_cache in (("vocab-map-build", False), ("vocab-map-cached", True)):
            vocabmap.build_vocab_map(*tables)  # the disk cache exists for the cached run
            vocabmap._MEMORY.clear()
            start = time.perf_counter()
            built = vocabmap.build_vocab_map(*tables, cache=use_cache)
            timings[impl] = (time.perf_counter() - start) * 1000
            vocabmap._MEMORY.clear()
        for impl, ms in timings.items():
            records.append(
                {
                    "impl": impl,
                    "pair": f"{teacher}->{student}",
                    "tokens": None,
                    "ms": ms,
                    "vocabs": [len(t) for t in tables],
                    "exact_share": built.exact_share,
                }
            )
    return records


def tail_records(tokenizers, text: str, fit: dict) -> list[dict]:
    """Tail mass of the projected targets for every ordered pair of different tokenizers."""
    records = []
    for teacher in tokenizers:
        for student in tokenizers:
            if student == teacher:
                continue
            sides = {name: _side(tokenizers[name], name, text) for name in (teacher, student)}
            seq = _ours(text, sides, (teacher, student))
            vmap = vocabmap.vocab_map(tokenizers[teacher], tokenizers[student], teacher)
            top, logprobs = bigram_rows(fit[teacher], len(vmap.teacher), seq.teacher_ids)
            own = np.clip(1 - np.exp(logprobs).sum(1), 0, None).mean()
            # The same rows renormalised over the top-k: what projection alone cannot place.
            complete = logprobs - np.log(np.exp(logprobs).sum(1, keepdims=True))
            records.append(
                {
                    "impl": "tail",
                    "pair": f"{teacher}->{student}",
                    "tokens": len(seq.teacher_ids),
                    "teacher_own_tail": float(own),
                    "projected_tail": tail_share(project(seq, top, logprobs, vmap)),
                    "projected_tail_complete_top_k": tail_share(project(seq, top, complete, vmap)),
                }
            )
    return records


def table(records: list[dict]) -> list[str]:
    timed = [r for r in records if "chunks" in r]
    lines = [
        "| pair | tokens | impl | ms | chunks | same chunks as TRL |",
        "|---|---:|---|---:|---:|---|",
    ]
    for r in timed:
        lines.append(
            f"| {r['pair']} | {r['tokens']} | {r['impl']} | {r['ms']:.2f} | {r['chunks']} | "
            f"{r['same_chunks_as_trl']} |"
        )
    return lines


def ratios(records: list[dict], sizes: tuple[int, ...]) -> list[str]:
    ms = {(r["pair"], r["tokens"], r["impl"]): r["ms"] for r in records if "ms" in r}
    lines = []
    for teacher, student in PAIRS:
        pair = f"{teacher}->{student}"
        at = 4096
        speedup = ms[(pair, at, "trl-gold-align")] / ms[(pair, at, "polydistill-align")]
        line = f"- {pair}: TRL / polydistill aligner at {at} tokens = {speedup:.1f}x"
        if 16384 in sizes:
            for impl in ("polydistill-align", "polydistill-align+project"):
                growth = ms[(pair, 16384, impl)] / ms[(pair, 4096, impl)]
                line += f"; {impl} 16k / 4k = {growth:.2f}"
        lines.append(line)
    return lines


def markdown(result: dict) -> str:
    """The section for one run (`result` as `main` saves it)."""
    records, sizes, samples = result["records"], tuple(result["sizes"]), result["samples"]
    maps = [r for r in records if r["impl"].startswith("vocab-map")]
    tails = [r for r in records if r["impl"] == "tail"]
    tail_tokens = sorted({r["tokens"] for r in tails})
    lines = [
        *results_md.heading(SECTION, result),
        "",
        f"ms per text (best of {samples} samples, {3 * samples} for calls under 20 ms; medians "
        "in the JSON), from the two tokenizations to the chunks (and targets); `tokenize` is the "
        "two encodes every implementation starts from. Ratios are within this run.",
        "",
        *table(records),
        "",
        *ratios(records, sizes),
        "",
        "| vocabulary map | vocabs | build ms (no cache) | load ms (disk cache) | exact share |",
        "|---|---|---:|---:|---:|",
    ]
    for build, cached in zip(maps[::2], maps[1::2], strict=True):
        lines.append(
            f"| {build['pair']} | {build['vocabs'][0]} x {build['vocabs'][1]} | {build['ms']:.0f} "
            f"| {cached['ms']:.0f} | {build['exact_share']:.3f} |"
        )
    lines += [
        "",
        f"Tail mass with bigram-model teachers (top-{TOP_K}) on one text of "
        f"{min(tail_tokens):,}-{max(tail_tokens):,} tokens (by the teacher's tokenizer), mean "
        "over the student rows in the loss:",
        "",
        "| teacher -> student | teacher's own tail | projected tail | projected tail, top-k "
        "renormalised (own tail 0) |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {r['pair']} | {r['teacher_own_tail']:.4f} | {r['projected_tail']:.4f} | "
        f"{r['projected_tail_complete_top_k']:.4f} |"
        for r in tails
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--json", type=Path, help="write the result here instead of benchmarks/results/align.json"
    )
    parser.add_argument("--quick", action="store_true", help="512 and 4k tokens, fewer repeats")
    args = parser.parse_args(argv)
    command = "python -m benchmarks.align" + (" --quick" if args.quick else "")
    result = {"command": command, "environment": results_md.environment(("trl",))}
    sizes = SIZES[:2] if args.quick else SIZES
    samples = 3 if args.quick else 9
    result |= {"sizes": list(sizes), "samples": samples, "records": measure(sizes, samples)}
    path = results_md.save("align", result, args.json)
    for line in table(result["records"]) + ratios(result["records"], sizes):
        print(line)
    print(f"wrote {path}")


def measure(sizes: tuple[int, ...], samples: int) -> list[dict]:
    tokenizers = {name: factory() for name, factory in REAL_TOKENIZERS.items()}
    document = corpus(6000, seed=1, skip=0)
    fit_text = corpus(20000, seed=2, skip=6000)
    fit = {name: np.array(encode(tok, fit_text)) for name, tok in tokenizers.items()}
    anchor = encode(tokenizers["o200k_harmony"], document)
    records = vocab_map_records(tokenizers)
    runs, facts = {}, {}
    for size in sizes:
        text = tokenizers["o200k_harmony"].decode(anchor[:size])
        for names in PAIRS:
            pair_runs, pair_facts = prepare_pair(tokenizers, names, text, fit)
            for impl, run in pair_runs.items():
                key = (pair_facts["pair"], size, impl)
                runs[key], facts[key] = run, pair_facts
    for (pair, size, impl), times in sample_ms(runs, samples).items():
        timing = {"ms": min(times), "ms_median": statistics.median(times)}
        records.append({**facts[(pair, size, impl)], "impl": impl, "tokens": size, **timing})
    text_4k = tokenizers["o200k_harmony"].decode(anchor[:4096])
    return records + tail_records(tokenizers, text_4k, fit)


if __name__ == "__main__":
    main()
