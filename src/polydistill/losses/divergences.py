"""The divergences a student can be distilled with, as per-bucket terms and their gradients.

Every supported divergence between a teacher distribution p and a student distribution q is a sum
over buckets b (vocabulary tokens, or the top-k tokens plus one tail bucket) of a term that depends
only on that bucket's two log-probabilities `lp_b` and `lq_b`. This module holds those terms, so
that the dense references (autograd through `bucket_terms`) and the chunked training path (the
closed-form `bucket_terms_and_grads`) share one definition:

- `forward_kl`  KL(p‖q) = Σ p (lp − lq)
- `reverse_kl`  KL(q‖p) = Σ q (lq − lp)
- `jsd`         generalized JSD(β) = β KL(p‖m) + (1−β) KL(q‖m), m = β p + (1−β) q, formed in log
                space; β = 0 is exactly forward KL and β = 1 exactly reverse KL (as TRL's GKD)
- `skew_kl`     DistiLLM's skew forward KL: KL(p‖α p + (1−α) q); α = 0 is forward KL
- `tv`          total variation ½ Σ |p − q|

Teacher log-probs are floored at the log of float32's smallest normal number, so a teacher
probability of exactly zero (a `-inf` log-prob, an empty tail) gives a large but finite reverse-KL
penalty and never a NaN.
"""

import math

import torch

from polydistill.errors import UserError

KINDS = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "tv")

LOG_PROB_FLOOR = math.log(torch.finfo(torch.float32).tiny)


def check_divergence_args(kind: str, beta: float, alpha: float, temperature: float) -> None:
    """Reject a kind or coefficient the formulas below are not defined for."""
    if kind not in KINDS:
        raise UserError(f"loss kind {kind!r} is unknown; choose one of {', '.join(KINDS)}")
    if not 0.0 <= beta <= 1.0:
        raise UserError(f"jsd beta must be in [0, 1], got {beta}")
    if not 0.0 <= alpha < 1.0:
        raise UserError(f"skew_kl alpha must be in [0, 1), got {alpha}")
    if not temperature > 0.0 or not math.isfinite(temperature):
        raise UserError(f"temperature must be a positive number, got {temperature}")


def effective_kind(kind: str, beta: float, alpha: float) -> str:
    """The kind whose formula is used: the JSD and skew-KL end points are plain KLs."""
    if kind == "jsd" and beta == 0.0:
        return "forward_kl"
    if kind == "jsd" and beta == 1.0:
        return "reverse_kl"
    if kind == "skew_kl" and alpha == 0.0:
        return "forward_kl"
    return kind


def floor_log_probs(logprobs: torch.Tensor) -> torch.Tensor:
    return logprobs.clamp_min(LOG_PROB_FLOOR)


def bucket_terms(
    kind: str, lq: torch.Tensor, lp: torch.Tensor, beta: float = 0.5, alpha: float = 0.1
) -> torch.Tensor:
    """Per-bucket divergence terms; sum over the last axis for the per-position divergence.

    `lq` are the student's log-probs, `lp` the (floored) teacher's; differentiable in both.
    """
    kind = effective_kind(kind, beta, alpha)
    if kind == "forward_kl":
        return lp.exp() * (lp - lq)
    if kind == "reverse_kl":
        return lq.exp() * (lq - lp)
    if kind == "jsd":
        log_m = torch.logaddexp(lp + math.log(beta), lq + math.log1p(-beta))
        return beta * lp.exp() * (lp - log_m) + (1.0 - beta) * lq.exp() * (lq - log_m)
    if kind == "skew_kl":
        log_s = torch.logaddexp(lp + math.log(alpha), lq + math.log1p(-alpha))
        return lp.exp() * (lp - log_s)
    return 0.5 * (lp.exp() - lq.exp()).abs()


def bucket_terms_and_grads(
    kind: str, lq: torch.Tensor, lp: torch.Tensor, beta: float = 0.5, alpha: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-bucket terms and their derivatives with respect to `lq`, in closed form.

    The derivatives are written without dividing by q, so they stay finite where the student's
    probability underflows. The chunked loss turns them into logit gradients with
    d/dz_j = g_j − q_j Σ_b g_b (softmax Jacobian), which is why only ∂/∂lq is needed.
    """
    kind = effective_kind(kind, beta, alpha)
    if kind == "forward_kl":
        p = lp.exp()
        return p * (lp - lq), p.neg_()
    if kind == "reverse_kl":
        q = lq.exp()
        term = q * (lq - lp)
        return term, term + q
    if kind == "jsd":
        log_m = torch.logaddexp(lp + math.log(beta), lq + math.log1p(-beta))
        grad = (lq - log_m).mul_(lq.exp()).mul_(1.0 - beta)
        term = (lp - log_m).mul_(lp.exp()).mul_(beta).add_(grad)
        return term, grad
    if kind == "skew_kl":
        log_s = torch.logaddexp(lp + math.log(alpha), lq + math.log1p(-alpha))
        term = (lp - log_s).mul_(lp.exp())
        grad = (lp + lq - log_s).exp_().mul_(alpha - 1.0)
        return term, grad
    q = lq.exp()
    diff = lp.exp().sub_(q)
    return 0.5 * diff.abs(), diff.sign_().mul_(q).mul_(-0.5)
