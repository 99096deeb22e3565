"""A teacher checkpoint in this process: generation and scoring with `transformers`.

    teacher = local_teacher("qwen", Path("ckpt/qwen"), batch_size=64)
    answers = teacher.complete(prompts, samples=1, max_new_tokens=24, seed=0)[0]
    rows = teacher.score(prompts, answers, top_k=32, temperature=1.0)

Batched, without gradients, in the checkpoint's dtype on the CPU (or `device`). Sampling forks
the random state, so a caller's training randomness is untouched.
"""

import gc
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from polydistill.chat import Prompt, encode_prompts, pad_left, pad_right, render_answers
from polydistill.targets import accurate_log_softmax, check_finite_logits
from polydistill.teachers.checkpoint import load_model, load_tokenizer
from polydistill.teachers.protocol import Progress, TeacherRows, tokenizer_fingerprint


def weights_hash(path: Path) -> str:
    """sha256 over the checkpoint's weight files, in name order (a GGUF file: that file)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted([*path.glob("*.safetensors"), *path.glob("*.bin")])
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as f:
            while block := f.read(1 << 24):
                digest.update(block)
    return digest.hexdigest()


class LocalTeacher:
    """A `Teacher` backed by a model in this process (see `protocol.Teacher`).

    Given `load` instead of a model (as `local_teacher` does), the weights are loaded when first
    needed and dropped again by `release()`: a run that reads its teachers one after another
    (`readings.gather_readings`) holds one teacher's weights at a time, whatever their number.
    """

    def __init__(
        self,
        name: str,
        model: PreTrainedModel | None,
        tokenizer: PreTrainedTokenizerBase,
        batch_size: int,
        path: Path | None = None,
        load: Callable[[], PreTrainedModel] | None = None,
    ) -> None:
        if model is None and load is None:
            raise ValueError("LocalTeacher needs a model or a way to load one")
        self.name, self._model, self._load, self.tokenizer = name, model, load, tokenizer
        self.batch_size, self.path = batch_size, path
        self.who = f"teacher {name!r}"

    @property
    def model(self) -> PreTrainedModel:
        if self._model is None:
            self._model = self._load()
        return self._model

    def release(self) -> None:
        """Drop the weights if they can be loaded again; the next call loads them anew."""
        if self._load is not None and self._model is not None:
            self._model = None
            gc.collect()  # a model's modules hold reference cycles: free its tensors now

    def fingerprint(self) -> dict[str, str]:
        weights = weights_hash(self.path) if self.path else "in-memory"
        return {"source": "local", "weights": weights, **tokenizer_fingerprint(self.tokenizer)}

    @torch.no_grad()
    def complete(
        self,
        prompts: Sequence[Prompt],
        *,
        samples: int,
        max_new_tokens: int,
        seed: int,
        on_batch: Progress | None = None,
    ) -> list[list[str]]:
        prompt_ids = encode_prompts(self.tokenizer, prompts, self.who)
        self.model.eval()
        answers: list[list[str]] = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for sample in range(samples):
                texts: list[str] = []
                for start in range(0, len(prompt_ids), self.batch_size):
                    rows = prompt_ids[start : start + self.batch_size]
                    done = self._generate(rows, max_new_tokens, sample > 0)
                    texts += [self.tokenizer.decode(ids) for ids in done]
                    if on_batch:
                        on_batch(len(rows), sum(len(ids) for ids in done))
                answers.append(texts)
        return answers

    def _generate(self, rows: Sequence[list[int]], max_new_tokens: int, sample: bool):
        """Completion ids of each row, cut before the first end-of-turn token."""
        tok = self.tokenizer
        input_ids, attention_mask = pad_left(rows, tok.pad_token_id)
        # Sampling draws from the teacher's own distribution: no temperature, top-k or top-p.
        how = (
            {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
            if sample
            else {"do_sample": False}
        )
        generated = self.model.generate(
            input_ids=input_ids.to(self.model.device),
            attention_mask=attention_mask.to(self.model.device),
            max_new_tokens=max_new_tokens,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            **how,
        )
        out = []
        for row in generated[:, input_ids.shape[1] :].tolist():
            out.append(row[: row.index(tok.eos_token_id)] if tok.eos_token_id in row else row)
        return out

    @torch.no_grad()
    def score(
        self,
        prompts: Sequence[Prompt],
        completions: Sequence[str],
        *,
        top_k: int,
        temperature: float,
        on_batch: Progress | None = None,
    ) -> list[TeacherRows]:
        rendered = render_answers(self.tokenizer, prompts, completions, self.who)
        self.model.eval()
        # Batches of similar length waste little on padding; rows go back in input order.
        order = sorted(range(len(rendered)), key=lambda i: len(rendered[i][0]))
        out: list[TeacherRows | None] = [None] * len(rendered)
        for first in range(0, len(order), self.batch_size):
            chosen = order[first : first + self.batch_size]
            batch = [rendered[i] for i in chosen]
            for i, rows in zip(chosen, self._score_batch(batch, top_k, temperature), strict=True):
                out[i] = rows
            if on_batch:
                on_batch(len(batch), sum(len(ids) for ids, _ in batch))
        return out

    def _score_batch(self, batch, top_k: int, temperature: float) -> list[TeacherRows]:
        input_ids, attention_mask = pad_right(
            [ids for ids, _ in batch], self.tokenizer.pad_token_id
        )
        device = self.model.device
        logits = self.model(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            use_cache=False,
        ).logits.float()
        check_finite_logits(logits, self.who)
        logits = logits[..., : len(self.tokenizer)]  # embedding rows past the tokenizer: padding
        # Observed tokens (bits per byte of prompt and answer) need only each row's normaliser;
        # the top-k rows, the answer positions only, get the float64-summed one.
        observed = logits[:, :-1].gather(2, input_ids[:, 1:, None].to(device))[..., 0]
        observed = (observed - logits[:, :-1].logsumexp(dim=-1)).cpu().numpy()
        answer_rows = [
            (row, slice(start - 1, len(ids) - 1)) for row, (ids, start) in enumerate(batch)
        ]
        answers = torch.cat([logits[row, span] for row, span in answer_rows])
        top = accurate_log_softmax(answers, temperature).topk(min(top_k, answers.shape[-1]), dim=-1)
        top_ids, top_logprobs = top.indices.cpu().numpy(), top.values.cpu().numpy()
        rows, at = [], 0
        for (ids, start), (row, _) in zip(batch, answer_rows, strict=True):
            n = len(ids) - start
            rows.append(
                TeacherRows(
                    ids=np.asarray(ids, dtype=np.int64),
                    start=start,
                    top_ids=top_ids[at : at + n].astype(np.int64),
                    top_logprobs=top_logprobs[at : at + n],
                    token_logprobs=observed[row, : len(ids) - 1],
                )
            )
            at += n
        return rows


def local_teacher(
    name: str,
    path: Path,
    batch_size: int,
    dtype: torch.dtype = torch.float32,
    template: str | None = None,
) -> LocalTeacher:
    """A checkpoint directory or GGUF file as a teacher (`template`: see `load_tokenizer`); its
    weights are loaded on first use and dropped by `release()`."""
    who = f"teacher {name!r}"
    tokenizer = load_tokenizer(path, who, template)  # checked now: a bad path fails at once
    return LocalTeacher(
        name, None, tokenizer, batch_size, path, load=lambda: load_model(path, who, dtype)
    )


def local_fingerprint(path: Path, who: str, template: str | None = None) -> dict[str, str]:
    """What a local checkpoint's `LocalTeacher.fingerprint()` says, without loading the model."""
    tokenizer = load_tokenizer(path, who, template)
    return {"source": "local", "weights": weights_hash(path), **tokenizer_fingerprint(tokenizer)}
