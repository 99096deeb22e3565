"""The elementwise part of the chunked loss for full-vocabulary (k = V) targets.

Given a sub-chunk of student logits (already divided by the temperature) and the teacher's
log-probs of every token, it returns each row's divergence, log-normaliser and the gradient with
respect to the logits. Every token is its own bucket, so this is a dozen `[rows × V]` elementwise
operations; eager PyTorch runs each as its own pass over memory, which costs about as much as the
three lm_head products. `torch.compile` fuses them into a few loops (about 5× faster on CPU), so
large calls use the compiled kernel. When compiling is impossible here (no C++ compiler, an
unsupported platform) the first failure is reported once as a warning and the eager kernel, which
computes the same function, is used from then on; `kernel_calls` and `compile_error()` say which
kernel ran, so that a test or benchmark of the compiled path cannot silently measure the eager one.
"""

import contextlib
import warnings

import torch

from polydistill.losses.divergences import bucket_terms_and_grads, floor_log_probs

# Below this many logits per call, compiling (tens of seconds the first time) does not pay.
COMPILE_MIN_ELEMENTS = 2**24


def full_vocab_step(
    scaled_logits: torch.Tensor,
    logprobs: torch.Tensor,
    divergence_scale: torch.Tensor,
    ce_scale: torch.Tensor,
    kind: str,
    beta: float,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(divergences [r], log normaliser [r], d loss / d logits [r, V]).

    The gradient is d/dz_j = s·(g_j − q_j Σ g) + c·q_j with s = `divergence_scale` and c =
    `ce_scale` (the cross-entropy's softmax part when it shares this temperature). The inputs are
    not modified: writing into a view of the caller's buffer would tie the compiled kernel to
    that buffer's size.

    The row sums accumulate in float64: compiled reductions add sequentially, and over 10^5
    terms of both signs float32 would cost the gradient two digits (measured: 7e-5 relative
    error instead of 8e-6).
    """
    peak = scaled_logits.amax(dim=1, keepdim=True)
    mass = (scaled_logits - peak).exp().sum(1, dtype=torch.float64)
    log_norm = (peak.squeeze(1) + mass.log()).to(scaled_logits.dtype)
    log_q = scaled_logits - log_norm[:, None]
    terms, grads = bucket_terms_and_grads(kind, log_q, floor_log_probs(logprobs), beta, alpha)
    grad_sum = grads.sum(1, dtype=torch.float64).to(grads.dtype)
    coefficient = ce_scale - divergence_scale * grad_sum
    grad = log_q.exp() * coefficient[:, None] + grads * divergence_scale[:, None]
    return terms.sum(1, dtype=torch.float64), log_norm, grad


_compiled = None
_compile_error: str | None = None
# How many calls ran each kernel since the process started (or `reset_kernel_calls`): the tests
# and benchmarks/loss.py read it to know that the compiled kernel, not its fallback, ran.
kernel_calls: dict[str, int] = {"compiled": 0, "eager": 0}


def compile_error() -> str | None:
    """Why compiling failed in this process (then every call runs eager), or None."""
    return _compile_error


def reset_kernel_calls() -> None:
    kernel_calls.update(compiled=0, eager=0)


def run_full_vocab_step(*args, compiled: bool) -> tuple[torch.Tensor, ...]:
    """`full_vocab_step`, compiled if asked and possible; counted in `kernel_calls`."""
    global _compiled, _compile_error
    if compiled and _compile_error is None:
        if _compiled is None:
            _compiled = torch.compile(full_vocab_step, dynamic=True)
        try:
            with _independent_sizes():
                out = _compiled(*args)
            kernel_calls["compiled"] += 1
            return out
        except Exception as error:  # any compiler failure: the eager kernel is the same function
            _compile_error = f"{type(error).__name__}: {str(error)[:300]}"
            warnings.warn(
                f"torch.compile is unavailable for the full-vocabulary loss ({_compile_error}); "
                "using the slower eager kernel",
                RuntimeWarning,
                stacklevel=2,
            )
    kernel_calls["eager"] += 1
    return full_vocab_step(*args)


def _independent_sizes():
    """Compile without "duck sizing", which would assume that sizes equal at the first call (a
    chunk and its sub-chunk, logits and log-probs buffers) stay equal, and recompile when the
    chunking of a later call differs. Private torch config: skipped if it moves."""
    try:
        from torch.fx.experimental import _config as fx_config

        return fx_config.patch(use_duck_shape=False)
    except (ImportError, AttributeError):
        return contextlib.nullcontext()
