"""The settings of on-policy and mixed (GKD-style) distillation.

    on_policy = OnPolicyConfig(mix=0.5, temperature=1.0, samples_per_prompt=2, buffer_steps=4)

Every field is documented where it is declared. The loss kind (`reverse_kl` is the on-policy
divergence; `forward_kl` and `jsd` work too), the teachers' top-k and the fusion strategy stay
where the off-policy run keeps them; this section only says how the student's own samples are
drawn and mixed in.
"""

from typing import Annotated

from pydantic import Field

from polydistill.config.fields import LaxPath, Positive, Strict


class OnPolicyConfig(Strict):
    """How the student samples, how long a sample is reused, and how much of training it is."""

    mix: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    """GKD's lambda: the fraction of optimiser steps trained on the student's own samples; the
    others take the off-policy batches. Step s is on-policy when floor((s + 1) * mix) >
    floor(s * mix), so the fraction is exact and spread evenly (0.5: every other step)."""

    temperature: Annotated[float, Field(gt=0.0)] = 1.0
    """Sampling temperature of the student (1: its own distribution, the on-policy case)."""

    samples_per_prompt: Positive = 1
    """Answers the student samples for each prompt at a buffer refresh."""

    max_new_tokens: Positive = 24
    """Longest sampled answer in tokens; a longer one is cut (and counted as truncated), and its
    row still ends with the end-of-turn token, graded by the teachers like every position."""

    buffer_prompts: Positive = 8
    """Prompts sampled at each buffer refresh: the buffer holds buffer_prompts x
    samples_per_prompt rows, walked through in shuffled passes until the next refresh."""

    buffer_steps: Positive = 1
    """Optimiser steps a buffer serves: it is generated from the current student weights at the
    first on-policy step of every block of buffer_steps steps and reused for the rest."""

    top_k: Positive = 32
    """Teacher ids kept per position; each row gets one more slot, held for the student's sampled
    token, so that token always carries its exact teacher probability."""

    generation_batch_size: Positive = 32
    """Prompts generated together (left-padded, one KV cache per batch)."""

    seed: int = 0
    """Seeds the prompts of each refresh and every sample: one sample's noise is a function of
    (seed, refresh, prompt, sample) alone, so a run is reproducible and batch-size independent."""

    warm_start: LaxPath | None = None
    """Folder with the student's weights to start from (an off-policy checkpoint `step-*` or a
    saved student: `model.safetensors` as `save_pretrained` writes it); None: the given weights."""
