"""What the served-teacher tests share: prompts and answers to read, the comparison of rows with
a reference, and a world teacher fit to be served.

    assert_same_rows(served.score(PROMPTS, ANSWERS, ...), local.score(PROMPTS, ANSWERS, ...))
"""

from pathlib import Path

import numpy as np
import torch

from polydistill.teachers.checkpoint import load_checkpoint
from polydistill.teachers.protocol import check_rows

PROMPTS = ["Where does Tomuqa Ruza live?", "What does Sudi Reqiqa do?", "reverse: abc", "7+35"]
# Gold-ish, odd and empty answers: the scored text need not be the teacher's own.
ANSWERS = ["Lisubofall", "vibowright keeper", "cba", ""]
# vLLM's float32 kernels against the local teacher's (and batched against unbatched).
TOL = 1e-3


def assert_same_rows(served, reference) -> None:
    """Same renderings and top-k ids, log-probs within `TOL`."""
    assert len(served) == len(reference)
    for s, ref in zip(served, reference, strict=True):
        check_rows(s, "served")
        np.testing.assert_array_equal(s.ids, ref.ids)
        assert s.start == ref.start
        np.testing.assert_array_equal(s.top_ids, ref.top_ids)
        np.testing.assert_allclose(s.top_logprobs, ref.top_logprobs, atol=TOL, rtol=0)
        np.testing.assert_allclose(s.token_logprobs, ref.token_logprobs, atol=TOL, rtol=0)


def eos_silenced(checkpoint: Path, out: Path, name: str) -> Path:
    """`checkpoint` with its end-of-turn embedding row zeroed (tied, so its logit is 0), saved
    to `out`: tiny teachers often end every answer at once, and greedy answers that run on make
    comparisons of generations bite."""
    model, tokenizer = load_checkpoint(checkpoint, name)
    with torch.no_grad():
        model.get_input_embeddings().weight[tokenizer.eos_token_id] = 0.0
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
