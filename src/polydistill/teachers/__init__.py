"""Teachers: where teacher distributions come from, behind one interface (`protocol.Teacher`).

- `checkpoint`: loading a Hugging Face checkpoint directory (a world teacher or a real Gemma,
  gpt-oss or Qwen checkpoint) with `HF_HUB_OFFLINE=1`, checked for what alignment needs.
- `protocol`: the `Teacher` protocol (complete prompts, score answers) and `TeacherRows`, one
  teacher's reading of one rendered answer in its own vocabulary.
- `local`: a checkpoint in this process (`transformers`, batched, no gradients).
- `served`: any OpenAI-compatible server with per-token log-probs (vLLM), token ids both
  ways, the tokenizer probed against the server's (`server_client`: retries, backoff,
  bounded concurrency; `prompt_logprobs`: the server's per-position maps as `TeacherRows`).
- `server_pool`: several servers of one served teacher: requests to free slots, failed tries
  moved to another server.
- `from_config`: a configured teacher (`path`, a world checkpoint, or `served`: the section
  `config.served` declares) as a `Teacher`.
- `readings`: every teacher answers the prompts, and every teacher scores every distinct answer.

Every source hands back teacher-vocabulary rows; `polydistill.align` projects them into the
student's vocabulary.
"""

import importlib
from typing import Any

__all__ = ["Teacher", "TeacherRows", "load_checkpoint", "load_tokenizer"]
_HOMES = {
    "Teacher": "protocol",
    "TeacherRows": "protocol",
    "load_checkpoint": "checkpoint",
    "load_tokenizer": "checkpoint",
}


def __getattr__(name: str) -> Any:
    """Imported on first use: importing one teacher module need not import transformers."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
