"""One rank of a torchrun training run, for tests/train/test_train_distributed.py.

    python -m torch.distributed.run --nproc-per-node 2 tests/support/distributed_worker.py SPEC.json

SPEC (JSON): strategy ("ddp" | "fsdp"), out (folder: rank 0 writes `records.json` and the final
model `final/` there), run_dir, checkpoint_every, resume, rows (of a global micro-batch),
timeout_s; run_dir_by_rank and fingerprint_by_rank ({rank: value}: ranks started with different
run folders or configs); die ({"rank", "step", "during": "step" | "checkpoint" | "hang"}: that
rank SIGKILLs itself at that step's end, or while writing that step's checkpoint, or sleeps an
hour there). A UserError prints `error: …` once (rank 0) and exits 2; a failed collective
prints `error: …` on the surviving rank and exits 1.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from polydistill.errors import CollectiveFailed, UserError
from polydistill.train import sft_loss, sharded_checkpoint
from polydistill.train.distributed import DistributedConfig, process_group
from polydistill.train.distributed_loop import save_model, train_distributed

VOCAB = 48
ROWS = 4
LENGTH = 10
LOOP = {
    "steps": 6,
    "lr": 2e-2,
    "warmup_steps": 1,
    "accumulation_steps": 2,
    "weight_decay": 0.01,
    "grad_clip": 0.5,  # small enough to clip: the global norm must be the one-process norm
}


def tiny_model() -> torch.nn.Module:
    """A float64 two-layer Qwen3, the same weights in every process."""
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "qwen3",
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=32,
        tie_word_embeddings=False,
    )
    return AutoModelForCausalLM.from_config(config, dtype=torch.float64)


def batch_at(i: int, rows: int = ROWS) -> dict[str, torch.Tensor]:
    """The i-th global micro-batch: random tokens whose rows count different numbers of loss
    tokens (so a mean taken per rank instead of over the global batch gives another step)."""
    generator = torch.Generator().manual_seed(1000 + i)
    ids = torch.randint(0, VOCAB, (rows, LENGTH), generator=generator)
    starts = torch.randint(1, LENGTH - 1, (rows,), generator=generator)
    labels = ids.clone()
    labels[torch.arange(LENGTH)[None, :] < starts[:, None]] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _die_hook(die: dict[str, Any], rank: int) -> Any:
    if rank != die.get("rank"):
        return None
    if die["during"] == "checkpoint":  # wrap DCP's save: this rank dies after writing its part

        def save_then_die(state: Any, checkpoint_id: Path) -> None:
            real_save(state, checkpoint_id=checkpoint_id)
            if f"step-{die['step']:08d}" in str(checkpoint_id):
                os.kill(os.getpid(), signal.SIGKILL)

        real_save = sharded_checkpoint.dcp.save
        sharded_checkpoint.dcp = SimpleNamespace(
            save=save_then_die, load=sharded_checkpoint.dcp.load
        )
        return None
    if die["during"] == "hang":  # alive but silent: the others must give up after timeout_s
        return lambda step, record: step == die["step"] and time.sleep(3600)
    return lambda step, record: step == die["step"] and os.kill(os.getpid(), signal.SIGKILL)


def _run_dir(spec: dict[str, Any], rank: int) -> Path | None:
    """The spec's run folder, or this rank's own (as if on an unshared disk)."""
    folder = spec.get("run_dir_by_rank", {}).get(str(rank), spec.get("run_dir"))
    return Path(folder) if folder else None


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    out = Path(spec["out"])
    config = DistributedConfig(strategy=spec["strategy"], timeout_s=spec.get("timeout_s", 600))
    try:
        with process_group(config) as ranks:
            records, model = train_distributed(
                tiny_model(),
                lambda i: batch_at(i, spec.get("rows", ROWS)),
                sft_loss,
                ranks=ranks,
                strategy=spec["strategy"],
                run_dir=_run_dir(spec, rank),
                checkpoint_every=spec.get("checkpoint_every", 0),
                resume=spec.get("resume", False),
                fingerprint=spec.get("fingerprint_by_rank", {}).get(str(rank), {}),
                on_step=_die_hook(spec.get("die", {}), rank),
                **LOOP,
            )
            save_model(model, out / "final", ranks)
            if ranks.main:
                (out / "records.json").write_text(json.dumps(records))
    except UserError as error:
        if rank == 0:
            print(f"error: {error}", file=sys.stderr)
        return 2
    except CollectiveFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
