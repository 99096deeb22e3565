"""Next-token selection for the local engine: greedy, temperature and nucleus (top-p) sampling.

Logprobs reported to clients are those of the model's own distribution (log-softmax of the
logits), independent of temperature and top-p, as the OpenAI API reports them.
"""

import torch


def sampling_distribution(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Probabilities to sample from: softmax(logits / temperature), restricted to the smallest
    set of most likely tokens whose mass reaches `top_p`, renormalised. `temperature` > 0."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1.0:
        return probs
    # Stable: tied tokens are ranked by id, so a seeded request samples the same way anywhere.
    sorted_probs, order = torch.sort(probs, descending=True, stable=True)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    # A token stays when the mass of the tokens strictly more likely than it is below top_p:
    # that always keeps the most likely token and stops right after the threshold is reached.
    keep_sorted = mass_before < top_p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    kept = torch.where(keep, probs, torch.zeros_like(probs))
    return kept / kept.sum(dim=-1, keepdim=True)


def choose_token(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator
) -> int:
    """One token id from a row of logits: the argmax at temperature 0, else a sample."""
    if temperature == 0.0:
        return int(torch.argmax(logits))
    probs = sampling_distribution(logits, temperature, top_p)
    return int(torch.multinomial(probs, 1, generator=generator))


def top_alternatives(logprobs: torch.Tensor, count: int) -> list[tuple[int, float]]:
    """The `count` most likely (token id, logprob) pairs of a row, best first."""
    if count <= 0:
        return []
    values, ids = torch.topk(logprobs, min(count, logprobs.shape[-1]))
    return [(int(i), float(v)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator: seeded for reproducible sampling, else from fresh entropy."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed % (2**63))
    return generator
