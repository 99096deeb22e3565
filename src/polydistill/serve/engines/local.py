"""The in-process engine: a transformers causal LM driven by one worker thread that batches.

Requests queue up; the worker takes up to `max_batch_size` of them (waiting `batch_wait_s` for
company after the first), left-pads the prompts into one prefill, then decodes all of them a
token per step with a shared KV cache until each one stops. Requests that arrive meanwhile form
the next batch. Each sequence keeps its own sampling parameters, seed, stop strings and
cancellation flag; events go back to the asyncio side through the event loop.
"""

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import torch

from polydistill.serve.core.served_model import ServedModel
from polydistill.serve.engines.base import (
    EngineError,
    EngineEvent,
    Finished,
    PromptLogprobs,
    SamplingParams,
    TextDelta,
    TokenLogprob,
)
from polydistill.serve.engines.incremental_text import IncrementalText
from polydistill.serve.engines.sampling import choose_token, make_generator, top_alternatives


@dataclass
class _Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    emit: Callable[[EngineEvent | BaseException], None]
    cancelled: bool = False
    generated: int = 0
    done: bool = False
    decoder: IncrementalText | None = None
    generator: torch.Generator | None = None


class LocalEngine:
    """Runs `model` in a worker thread; `served` supplies the tokenizer and end tokens."""

    def __init__(
        self,
        model: Any,
        served: ServedModel,
        max_batch_size: int = 8,
        batch_wait_s: float = 0.002,
    ) -> None:
        self._model = model
        self._served = served
        self._max_batch_size = max_batch_size
        self._batch_wait_s = batch_wait_s
        self._queue: queue.Queue[_Sequence | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._closing = False
        self.batch_sizes: list[int] = []

    async def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="local-engine", daemon=True)
            self._thread.start()

    async def close(self) -> None:
        self._closing = True
        self._queue.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)
            self._thread = None

    async def generate(
        self, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[EngineEvent]:
        if self._closing or self._thread is None:
            raise EngineError("the engine is not running")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[EngineEvent | BaseException] = asyncio.Queue()

        def emit(event: EngineEvent | BaseException) -> None:
            # A closed loop means nobody is listening any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(events.put_nowait, event)

        sequence = _Sequence(list(prompt_ids), params, emit)
        self._queue.put(sequence)
        try:
            while True:
                event = await events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            sequence.cancelled = True

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            live = [s for s in batch if not s.cancelled]
            for sequence in batch:
                if sequence.cancelled:
                    sequence.emit(Finished("cancelled", 0))
            if not live:
                continue
            self.batch_sizes.append(len(live))
            try:
                with torch.inference_mode():
                    self._run_batch(live)
            except Exception as error:  # a model failure must reach every waiting request
                failure = EngineError(f"generation failed: {type(error).__name__}: {error}")
                for sequence in live:
                    if not sequence.done:
                        sequence.emit(failure)

    def _next_batch(self) -> list[_Sequence] | None:
        first = self._queue.get()
        if first is None:
            self._drain_cancelled()
            return None
        batch = [first]
        deadline = time.monotonic() + self._batch_wait_s
        while len(batch) < self._max_batch_size:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # run this batch, then stop
                break
            batch.append(item)
        return batch

    def _drain_cancelled(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item.emit(Finished("cancelled", 0))

    def _run_batch(self, batch: list[_Sequence]) -> None:
        served = self._served
        for sequence in batch:
            sequence.decoder = IncrementalText(served.decode, sequence.params.stop)
            sequence.generator = make_generator(sequence.params.seed)
        last_logits, cache, mask, positions = self._prefill(batch)
        while True:
            next_ids = [
                self._step(sequence, last_logits[row]) for row, sequence in enumerate(batch)
            ]
            if all(sequence.done for sequence in batch):
                return
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
            output = self._model(
                input_ids=torch.tensor(next_ids).unsqueeze(1),
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
            )
            cache = output.past_key_values
            last_logits = output.logits[:, -1, :].float()

    def _prefill(
        self, batch: list[_Sequence]
    ) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
        pad_id = self._served.tokenizer.pad_token_id or 0
        width = max(len(s.prompt_ids) for s in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, sequence in enumerate(batch):
            length = len(sequence.prompt_ids)
            input_ids[row, width - length :] = torch.tensor(sequence.prompt_ids)
            mask[row, width - length :] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        wants_prompt = any(s.params.prompt_logprobs for s in batch)
        output = self._model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=0 if wants_prompt else 1,
        )
        logits = output.logits.float()
        for row, sequence in enumerate(batch):
            if sequence.params.prompt_logprobs:
                length = len(sequence.prompt_ids)
                rows = logits[row, width - length : width - 1]
                sequence.emit(self._prompt_logprobs(sequence, rows))
        return logits[:, -1, :], output.past_key_values, mask, positions

    def _prompt_logprobs(self, sequence: _Sequence, logits: torch.Tensor) -> PromptLogprobs:
        served = self._served
        ids = sequence.prompt_ids
        logprobs = torch.log_softmax(logits, dim=-1)
        entries = [TokenLogprob(served.token_text(ids[0]), None)]
        for position, token_id in enumerate(ids[1:]):
            entries.append(self._token_logprob(token_id, logprobs[position], sequence.params))
        return PromptLogprobs(tuple(entries))

    def _token_logprob(
        self, token_id: int, logprobs: torch.Tensor, params: SamplingParams
    ) -> TokenLogprob:
        text = self._served.token_text
        top = top_alternatives(logprobs, params.logprobs or 0)
        return TokenLogprob(
            text(token_id), float(logprobs[token_id]), tuple((text(i), lp) for i, lp in top)
        )

    def _step(self, sequence: _Sequence, logits: torch.Tensor) -> int:
        """Choose, report and account one token of `sequence`; return the id to feed next."""
        pad_id = self._served.tokenizer.pad_token_id or 0
        if sequence.done:
            return pad_id
        params = sequence.params
        if sequence.cancelled or self._closing:
            return self._finish(sequence, "cancelled", pad_id)
        if sequence.generated >= params.max_tokens:
            return self._finish(sequence, "length", pad_id)
        assert sequence.generator is not None and sequence.decoder is not None
        token_id = choose_token(logits, params.temperature, params.top_p, sequence.generator)
        sequence.generated += 1
        logprob = ()
        if params.logprobs is not None:
            logprob = (self._token_logprob(token_id, torch.log_softmax(logits, -1), params),)
        is_end = token_id in self._served.eos_token_ids
        text = sequence.decoder.flush() if is_end else sequence.decoder.push(token_id)
        if not is_end and sequence.generated >= params.max_tokens:
            text += sequence.decoder.flush()
        sequence.emit(TextDelta(text, 1, logprob))
        if is_end or sequence.decoder.stopped:
            return self._finish(sequence, "stop", token_id)
        if sequence.generated >= params.max_tokens:
            return self._finish(sequence, "length", token_id)
        return token_id

    @staticmethod
    def _finish(sequence: _Sequence, reason: str, next_id: int) -> int:
        sequence.done = True
        sequence.emit(Finished(reason, sequence.generated))  # type: ignore[arg-type]
        return next_id
