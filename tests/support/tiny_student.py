"""A one-layer student of every world teacher, for tests that train one on the tiny world
(tests/tiny.yaml): as a config section (`STUDENT`, six prompts per tag; `tiny_student_config`
writes the whole config) and as overrides of the command line (`OVERRIDES`).

    config = tiny_student_config(tiny_cache, tmp_path / "bench.yaml")
"""

from pathlib import Path

import yaml
from repo_paths import TINY

STUDENT = {
    "teachers": ["gemma", "gptoss", "qwen"],
    "model": {"hidden_size": 32, "layers": 1, "heads": 1, "kv_heads": 1, "head_dim": 32,
              "intermediate_size": 64},
    "train": {"steps": 50, "batch_size": 4, "lr": 3.0e-3, "warmup_steps": 1},
    "prompts_per_tag": 6,
    "top_k": 8,
}  # fmt: skip


OVERRIDES = [
    "threads=1",
    "student.teachers=[gemma, gptoss, qwen]",
    "student.prompts_per_tag=8",
    "student.top_k=8",
    "student.model={hidden_size: 64, layers: 1, heads: 1, kv_heads: 1, head_dim: 64, "
    "intermediate_size: 64}",
    "student.train={steps: 4, batch_size: 8, warmup_steps: 1}",
    "student.checkpoint_every=2",
    "eval.heldout_limit=2",
]
"""As command-line overrides of tests/tiny.yaml: a one-layer student of all three teachers, 4
steps of 8 rows (a checkpoint at steps 2 and 4), scored on 2 held-out prompts per tag: a few
seconds of training, for the tests that run the `polydistill` command."""


def tiny_student_config(world_cache: Path, path: Path) -> Path:
    """Write tests/tiny.yaml, its world cached in `world_cache`, with `STUDENT`, to `path`."""
    raw = yaml.safe_load(TINY.read_text())
    raw["world"]["cache_dir"] = str(world_cache)
    raw["student"] = STUDENT
    path.write_text(yaml.safe_dump(raw))
    return path
