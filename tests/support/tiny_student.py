"""A one-layer student of every world teacher, on six prompts per tag, for tests that train
one on the tiny world (tests/tiny.yaml), and that config written whole.

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


def tiny_student_config(world_cache: Path, path: Path) -> Path:
    """Write tests/tiny.yaml, its world cached in `world_cache`, with `STUDENT`, to `path`."""
    raw = yaml.safe_load(TINY.read_text())
    raw["world"]["cache_dir"] = str(world_cache)
    raw["student"] = STUDENT
    path.write_text(yaml.safe_dump(raw))
    return path
