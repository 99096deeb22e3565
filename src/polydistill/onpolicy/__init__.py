"""On-policy and mixed (GKD-style) distillation from several teachers with different tokenizers.

    run = OnPolicyRun(student, tokenizer, teachers, prompts, OnPolicyConfig(mix=0.5),
                      Grading("evidence"))
    batch_at = on_policy_batches(run, batch_size=8, off_policy=...)
    train(student, batch_at, distillation_loss("reverse_kl", ...), steps=..., lr=...)

- `config`: `OnPolicyConfig` (mix, temperature, samples per prompt, max new tokens, buffer
  size and reuse, top-k, seed, warm start).
- `sampling`: the student samples answers (batched `generate` with a KV cache, Gumbel-max noise
  seeded per sample), keeping its sampled ids and the ids of its rendering of the text.
- `targets`: every teacher scores every sample (`Teacher.score`), projected into the student's
  vocabulary on the sampled path and fused; the sampled token keeps its exact teacher probability.
- `batches`: the buffer, the λ mix with off-policy batches, warm start; a `BatchFn` for `train`.
"""

from polydistill.config.on_policy import OnPolicyConfig
from polydistill.onpolicy.batches import (
    OnPolicyRun,
    is_on_policy,
    on_policy_batches,
    refresh_rows,
    warm_start,
)
from polydistill.onpolicy.sampling import Sample, Samples, sample_answers
from polydistill.onpolicy.targets import Grading, graded_rows

__all__ = [
    "Grading",
    "OnPolicyConfig",
    "OnPolicyRun",
    "Sample",
    "Samples",
    "graded_rows",
    "is_on_policy",
    "on_policy_batches",
    "refresh_rows",
    "sample_answers",
    "warm_start",
]
