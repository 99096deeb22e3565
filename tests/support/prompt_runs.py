"""The config of a short `polydistill run` on prompt files: the tiny world's teachers as `path:`
checkpoints, a small world student, two training steps (the student tests' runs)."""

from pathlib import Path

import yaml
from repo_paths import TINY

SMALL = {"hidden_size": 64, "layers": 1, "heads": 1, "kv_heads": 1, "head_dim": 64}


def prompt_run(tiny_world, tiny_cache, teachers: list[dict], data: dict, out: Path) -> Path:
    """Write the run config to `out` and return it; `teachers`: name, family and any more
    fields of each, its path the tiny world's checkpoint of that name."""
    raw = yaml.safe_load(TINY.read_text())
    raw["world"]["cache_dir"] = str(tiny_cache)
    raw["threads"] = 1
    raw["teachers"] = [
        {"path": str(tiny_world.teachers[t["name"]]), "licence": {"id": "apache-2.0"}, **t}
        for t in teachers
    ]
    raw["data"] = data
    raw["student"] = {
        "teachers": [t["name"] for t in teachers],
        "model": {**SMALL, "intermediate_size": 64},
        "train": {"steps": 2, "batch_size": 4, "lr": 3.0e-3, "warmup_steps": 1},
        "prompts_per_tag": 4,
        "top_k": 8,
        "checkpoint_every": 0,
    }
    out.write_text(yaml.safe_dump(raw))
    return out
