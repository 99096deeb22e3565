"""A synthetic `polydistill run` output folder for the report tests: three teachers, the student,
four baselines, training logs for three of them, and the contributions of an evidence-routed
fusion. Numbers are seeded random, so each test can recompute what the report should show."""

import json
import random
from pathlib import Path

DOMAINS = ["arithmetic", "facts", "strings"]
TEACHERS = ["gemma", "gptoss", "qwen"]
MODELS = [
    "baseline:single:qwen",  # out of report order on purpose: the report puts teachers first
    "teacher:gemma",
    "teacher:gptoss",
    "teacher:qwen",
    "student",
    "baseline:uniform",
    "baseline:seqkd",
    "baseline:oracle",
]
LOGGED = ["student", "baseline:uniform", "baseline:single:qwen"]
# The tables a report of this run has: every one the report can show.
TABLE_IDS = {
    "accuracy-table",
    "targets-table",
    "bits-per-byte-table",
    "training-table",
    "mass-table",
    "completions-table",
}


def synthetic_metrics(seed: int = 0) -> dict:
    rng = random.Random(seed)
    return {
        "domains": DOMAINS,
        "models": {
            model: {
                "accuracy": {d: round(rng.random(), 4) for d in DOMAINS},
                "bits_per_byte": {d: round(rng.uniform(0.1, 2.0), 4) for d in DOMAINS},
                "params": rng.randint(100_000, 9_000_000),
            }
            for model in MODELS
        },
    }


def synthetic_contributions() -> dict:
    return {
        "strategy": "evidence",
        "teachers": TEACHERS,
        "mass": {
            "arithmetic": {"gemma": 0.02, "gptoss": 0.03, "qwen": 0.95},
            "facts": {"gemma": 0.1, "gptoss": 0.85, "qwen": 0.05},
            "strings": {"gemma": 0.9, "qwen": 0.1},  # gptoss supplied nothing here
        },
        "completions": {
            "arithmetic": {"qwen": 7990, "gptoss": 10, "gemma": 0},
            "facts": {"gptoss": 500},
            "strings": {"gemma": 300, "qwen": 2},
        },
        "tail": {"gemma": 0.012, "gptoss": 0.03, "qwen": 0.004},
        "examples": [
            {
                "prompt": 0,
                "domain": "arithmetic",
                "completion_by": "qwen",
                "weights": {"gemma": 0.01, "gptoss": 0.02, "qwen": 0.97},
            }
        ],
    }


def train_records(steps: int, start_loss: float, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "step": step,
            "loss": start_loss * 0.99**step + rng.random() * 0.05,
            "divergence": 0.4 * 0.99**step,
            "cross_entropy": 1.1 * 0.99**step,
            "lr": 1e-3,
            "grad_norm": 1.0 + rng.random(),
            "loss_tokens": 512,
            "tokens_per_s": 4000 + rng.random() * 100,
        }
        for step in range(1, steps + 1)
    ]


def write_synthetic_run(
    run_dir: Path, logs: bool = True, contributions: bool = True, steps: int = 120
) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(json.dumps(synthetic_metrics(), indent=2))
    if logs:
        (run_dir / "train_logs").mkdir(exist_ok=True)
        for i, model in enumerate(LOGGED):
            lines = [json.dumps(r) for r in train_records(steps, 3.0 + i, seed=i)]
            path = run_dir / "train_logs" / f"{model.replace(':', '__')}.jsonl"
            path.write_text("".join(f"{line}\n" for line in lines))
    if contributions:
        (run_dir / "contributions.json").write_text(json.dumps(synthetic_contributions()))
    return run_dir
