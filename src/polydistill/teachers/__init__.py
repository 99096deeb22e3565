"""Teachers: where teacher distributions come from, behind one interface (`protocol.Teacher`).

- `checkpoint`: loading a Hugging Face checkpoint directory (a world teacher or a real Gemma,
  gpt-oss or Qwen checkpoint) with `HF_HUB_OFFLINE=1`, checked for what alignment needs.
- `protocol`: the `Teacher` protocol (complete prompts, score answers) and `TeacherRows`, one
  teacher's reading of one rendered answer in its own vocabulary.
- `local`: a checkpoint in this process (`transformers`, batched, no gradients).
- `served`: any OpenAI-compatible server with per-token log-probs (vLLM), token ids both
  ways, the tokenizer probed against the server's (`server_client`: retries, backoff,
  bounded concurrency; `prompt_logprobs`: the server's per-position maps as `TeacherRows`).
- `readings`: every teacher answers the prompts, and every teacher scores every distinct answer.

Every source hands back teacher-vocabulary rows; `polydistill.align` projects them into the
student's vocabulary.
"""

from polydistill.teachers.checkpoint import load_checkpoint, load_tokenizer
from polydistill.teachers.protocol import Teacher, TeacherRows

__all__ = ["Teacher", "TeacherRows", "load_checkpoint", "load_tokenizer"]
