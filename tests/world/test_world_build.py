"""A world is reproducible: the same config builds the same files, however it is scheduled."""

import hashlib
import json
from pathlib import Path

from polydistill.world.build import build_world


def contents(root: Path) -> dict[str, str]:
    """Digest of every file of a world by its path; the build record without its timings and
    where it was built."""
    digests = {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "world.json"
    }
    record = json.loads((root / "world.json").read_text())
    del record["seconds"], record["config"]["cache_dir"]
    for teacher in record["teachers"]:
        del teacher["seconds"]
    return {**digests, "world.json": json.dumps(record, sort_keys=True)}


def test_a_world_rebuilds_bit_for_bit_on_other_workers(tiny_config, tiny_world, tmp_path):
    """The tiny world (three teachers at once on `threads=2`) built again in another cache on
    one core, two teachers at a time: the same data, tokenizer files and teacher weights."""
    elsewhere = tiny_config.model_copy(update={"threads": 1}, deep=True)
    elsewhere.world.cache_dir = tmp_path
    again = build_world(elsewhere)
    assert again.root != tiny_world.root and again.root.name == tiny_world.root.name
    built = contents(again.root)
    assert {"tokenizers/student/tokenizer.json", "teachers/gptoss/model.safetensors"} <= set(built)
    assert built == contents(tiny_world.root)
