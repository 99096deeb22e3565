"""Cross-tokenizer objectives that compare aligned chunks instead of projected distributions.

Two baselines for the benchmark, on plain tensors; chunk boundaries come from
`AlignedSequence.token_bounds` and index whole sequences, and logits follow the forward-pass
convention (row u is the distribution of token u + 1).

- `chunk_likelihood_loss` (the idea of ALM, approximate likelihood matching): the teacher and
  the student each give the log-likelihood of every aligned chunk (the chain rule over the chunk's
  own tokens); the loss is the Bernoulli KL between the two chunk probabilities, so chunks the
  teacher finds likely and the student does not (or the reverse) are pushed together, whatever
  the tokens inside.
- `uld_loss` (Universal Logit Distillation, as TRL GOLD computes it): each chunk's distribution
  is the one at its first token times the probabilities of the observed later tokens; both
  sides' probabilities are sorted and compared by L1, which ignores which token is which.
"""

import torch
import torch.nn.functional as F


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log p(ids[u] | ids[:u]) for u >= 1 (entry 0 is 0: nothing predicts the first token)."""
    logprobs = torch.log_softmax(logits[:-1].float(), dim=-1)
    picked = logprobs.gather(-1, ids[1:, None].long()).squeeze(-1)
    return torch.cat([picked.new_zeros(1), picked])


def chunk_loglik(token_lp: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    """Sum of `token_lp` over each chunk [bounds[c], bounds[c+1])."""
    bounds = bounds.to(token_lp.device).long()
    chunk_of = torch.bucketize(
        torch.arange(int(bounds[0]), int(bounds[-1]), device=token_lp.device), bounds, right=True
    )
    sums = token_lp.new_zeros(len(bounds) - 1)
    return sums.index_add(0, chunk_of - 1, token_lp[int(bounds[0]) : int(bounds[-1])])


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, accurate at both ends."""
    x = x.clamp(max=-1e-12)
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def chunk_likelihood_loss(
    student_chunk_ll: torch.Tensor, teacher_chunk_ll: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Mean over chunks of KL(Bernoulli(p_teacher) || Bernoulli(p_student)), p = exp(ll / T)."""
    student = student_chunk_ll / temperature
    teacher = (teacher_chunk_ll / temperature).to(student.dtype)
    p_teacher = teacher.exp()
    kl = p_teacher * (teacher - student) + (1 - p_teacher) * (
        _log1mexp(teacher) - _log1mexp(student)
    )
    return kl.mean()


def merge_chunk_probs(
    logits: torch.Tensor, ids: torch.Tensor, bounds: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Per chunk: the distribution before its first token times P(observed later tokens)."""
    bounds = bounds.long()
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    starts = bounds[:-1]
    later = token_logprobs(logits.float() / temperature, ids)
    inside = chunk_loglik(later, bounds) - later[starts]
    return probs[starts - 1] * inside.exp()[:, None]


def uld_loss(
    student_logits: torch.Tensor,
    student_ids: torch.Tensor,
    student_bounds: torch.Tensor,
    teacher_logits: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_bounds: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Sorted-probability L1 between the chunk distributions of both sides, mean over chunks."""
    student = merge_chunk_probs(student_logits, student_ids, student_bounds, temperature)
    teacher = merge_chunk_probs(teacher_logits, teacher_ids, teacher_bounds, temperature)
    student = student.sort(dim=-1, descending=True).values
    teacher = teacher.sort(dim=-1, descending=True).values.to(student.dtype)
    width = max(student.shape[-1], teacher.shape[-1])
    student = F.pad(student, (0, width - student.shape[-1]))
    teacher = F.pad(teacher, (0, width - teacher.shape[-1]))
    return (student - teacher).abs().sum(-1).mean()
