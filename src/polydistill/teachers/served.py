"""A teacher served by an OpenAI-compatible server that returns per-token log-probs (vLLM).

    teacher = served_teacher("qwen", Path("ckpt/qwen"), base_url="http://10.0.0.5:8000")
    teacher = served_teacher("qwen", Path("ckpt/qwen"), base_url=["http://a:8000", "http://b:8000"])
    answers = teacher.complete(prompts, samples=1, max_new_tokens=24, seed=0)[0]
    rows = teacher.score(prompts, answers, top_k=32, temperature=1.0)

Where the server is: arguments first, else the environment, with the teacher's name upper-cased
and every other character than letters and digits turned into `_`:
`POLYDISTILL_TEACHER_<NAME>_URL` (base URL, without `/v1`; several servers of the same model
comma-separated), `POLYDISTILL_TEACHER_<NAME>_MODEL` (the served model id; the server's only model
when unset) and `POLYDISTILL_TEACHER_<NAME>_API_KEY` (sent as a bearer token; keep it out of
configs). Several servers share the work (`server_pool.ServerPool`: each its own concurrency, a
failed try moved to another server); the answers are the same for any number of them.

Everything travels as the teacher's own token ids, so positions are exact: scoring sends the
rendering of `chat.render_answer` to `/v1/completions` with `prompt_logprobs: k` and reads
`TeacherRows` from the answer (`prompt_logprobs`); generation sends the rendered prompt, greedy
(temperature 0) for sample 0 and temperature 1 for later samples, each request seeded from
(`seed`, prompt, sample) so an answer depends on neither batching nor order, stops at the
end-of-turn id, and decodes the returned ids with the local tokenizer as the local teacher does.

The tokenizer is local (the checkpoint directory) and is probed against every server's
(`/tokenize` of multilingual text, digits and the chat markup) before use: any difference is a
`UserError` naming the server and the first differing id; so is a server serving another model
id than the first. A scoring temperature other than 1 is exact: the
server returns the whole distribution at every position (`prompt_logprobs: -1`, which needs
`--max-logprobs -1`) and it is rescaled here; responses then grow with the vocabulary, so keep
temperature 1 for real vocabularies. Log-probs cover the model's whole output layer: a
checkpoint whose embedding has padding rows past the tokenizer (real Qwen) normalises over them,
where the local teacher does not.
"""

import hashlib
import os
import re
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from transformers import PreTrainedTokenizerBase

from polydistill.chat import (
    Prompt,
    encode_prompts,
    end_of_turn,
    prompt_key,
    render_answers,
    render_prompts,
)
from polydistill.errors import UserError
from polydistill.teachers.checkpoint import load_tokenizer
from polydistill.teachers.prompt_logprobs import MalformedAnswer, rows_from_prompt_logprobs
from polydistill.teachers.protocol import Progress, TeacherRows, tokenizer_fingerprint
from polydistill.teachers.server_client import ServerClient
from polydistill.teachers.server_pool import ServerPool

PROBE_PROMPT = "Translate 12,345.67 and 0x1F: naïve café, Grüße, 東京タワー, Москва, العربية, 🙂!"
PROBE_ANSWER = "  42 = 6*7\n\tdone — ok?"


def env_name(teacher: str, what: str) -> str:
    """`POLYDISTILL_TEACHER_<NAME>_<WHAT>` for a teacher name."""
    return f"POLYDISTILL_TEACHER_{re.sub(r'[^A-Za-z0-9]', '_', teacher).upper()}_{what}"


def sample_seed(seed: int, prompt: Prompt, sample: int) -> int:
    """A request's seed: a function of the run's seed, the whole prompt (`chat.prompt_key`) and
    the sample index."""
    digest = hashlib.sha256(f"{seed}\0{sample}\0{prompt_key(prompt)}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class ServedTeacher:
    """A `Teacher` whose model runs behind the servers of `pool` as `model` (see
    `protocol.Teacher`)."""

    def __init__(
        self,
        name: str,
        tokenizer: PreTrainedTokenizerBase,
        pool: ServerPool,
        model: str,
        batch_size: int = 16,
    ) -> None:
        self.name, self.tokenizer, self.pool, self.model = name, tokenizer, pool, model
        self.batch_size = batch_size
        self.who = f"teacher {name!r}"

    def close(self) -> None:
        self.pool.close()

    def fingerprint(self) -> dict[str, str]:
        """The first server's model entry: every server serves the same model id (checked)."""
        served = served_model(self.pool.clients[0], self.model)
        return {
            "source": "served",
            "model": str(served["id"]),
            "root": str(served.get("root") or ""),
            "revision": str(served.get("revision") or ""),
            **tokenizer_fingerprint(self.tokenizer),
        }

    def context_length(self) -> int | None:
        """The most tokens (prompt and answer) every server takes: the least `max_model_len` of
        the servers' `/v1/models` entries (vLLM states it); None when no server states one."""
        stated = [
            served_model(client, self.model).get("max_model_len") for client in self.pool.clients
        ]
        lengths = [int(length) for length in stated if length is not None]
        return min(lengths) if lengths else None

    def probe_tokenizers(self) -> None:
        """Refuse any server whose tokenizer encodes the probe differently from ours."""
        tok = self.tokenizer
        probe = render_prompts(tok, [PROBE_PROMPT], self.who)[0] + PROBE_ANSWER + tok.eos_token
        ours = tok(probe, add_special_tokens=False)["input_ids"]
        body = {"model": self.model, "prompt": probe, "add_special_tokens": False}
        for client in self.pool.clients:
            theirs = [int(i) for i in client.post("/tokenize", body)["tokens"]]
            self._check_probe(client.base_url, ours, theirs)

    def _check_probe(self, url: str, ours: list[int], theirs: list[int]) -> None:
        if ours == theirs:
            return
        at = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), None)
        if at is None:
            at = min(len(ours), len(theirs))
        mine = ours[at] if at < len(ours) else "end"
        served = theirs[at] if at < len(theirs) else "end"
        raise UserError(
            f"{self.who}: server {url} tokenizer differs from the configured one at id #{at} of "
            f"the probe (server {served}, local {mine}; {len(theirs)} vs {len(ours)} ids): "
            "serve the same tokenizer or point the teacher at the served model's tokenizer"
        )

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
        end = end_of_turn(self.tokenizer, self.who)
        answers: list[list[str]] = []
        for sample in range(samples):
            bodies = [
                {
                    "model": self.model,
                    "prompt": ids,
                    "max_tokens": max_new_tokens,
                    # Sample 0 greedy; later samples from the teacher's own distribution.
                    "temperature": 0.0 if sample == 0 else 1.0,
                    "top_p": 1.0,
                    "top_k": -1,
                    "min_p": 0.0,
                    "repetition_penalty": 1.0,
                    "seed": sample_seed(seed, prompt, sample),
                    "n": 1,
                    "stop_token_ids": [end],
                    "skip_special_tokens": False,
                    "return_token_ids": True,
                }
                for prompt, ids in zip(prompts, prompt_ids, strict=True)
            ]
            texts = []
            for answer in self.pool.map(self._completion, bodies):
                texts.append(self._answer_text(answer, end))
                if on_batch:
                    on_batch(1, len(answer.get("token_ids") or ()))
            answers.append(texts)
        return answers

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._one_choice(self.pool.post("/v1/completions", body))

    def _one_choice(self, answer: dict[str, Any]) -> dict[str, Any]:
        choices = answer.get("choices") or []
        if len(choices) != 1:
            raise UserError(f"{self.who}: server sent {len(choices)} choices for one prompt")
        return choices[0]

    def _answer_text(self, choice: dict[str, Any], end: int) -> str:
        """The answer as the local teacher writes it: ids cut at end-of-turn, decoded here;
        the server's text only from a server that does not return ids."""
        ids = choice.get("token_ids")
        if ids is None:
            return str(choice.get("text") or "")
        ids = [int(i) for i in ids]
        return self.tokenizer.decode(ids[: ids.index(end)] if end in ids else ids)

    def score(
        self,
        prompts: Sequence[Prompt],
        completions: Sequence[str],
        *,
        top_k: int,
        temperature: float,
        on_batch: Progress | None = None,
    ) -> list[TeacherRows]:
        if temperature <= 0:
            raise UserError(f"{self.who}: scoring temperature must be > 0, got {temperature}")
        rendered = render_answers(self.tokenizer, prompts, completions, self.who)
        batches = [
            rendered[i : i + self.batch_size] for i in range(0, len(rendered), self.batch_size)
        ]
        out: list[TeacherRows] = []
        for batch, rows in zip(
            batches,
            self.pool.map(lambda b: self._score_batch(b, top_k, temperature), batches),
            strict=True,
        ):
            out += rows
            if on_batch:
                on_batch(len(batch), sum(len(ids) for ids, _ in batch))
        return out

    def _score_batch(
        self, batch: list[tuple[list[int], int]], top_k: int, temperature: float
    ) -> list[TeacherRows]:
        full = temperature != 1.0
        body = {
            "model": self.model,
            "prompt": [ids for ids, _ in batch],
            # One token must be generated; it is ignored.
            "max_tokens": 1,
            "temperature": 0.0,
            "prompt_logprobs": -1 if full else top_k,
        }
        url, answer = self.pool.request("POST", "/v1/completions", body)
        choices = sorted(answer.get("choices") or [], key=lambda c: c["index"])
        if len(choices) != len(batch):
            raise UserError(f"{self.who}: server sent {len(choices)} choices for {len(batch)}")
        try:
            return [
                rows_from_prompt_logprobs(
                    ids, start, choice.get("prompt_logprobs") or [], top_k, temperature, full
                )
                for (ids, start), choice in zip(batch, choices, strict=True)
            ]
        except MalformedAnswer as error:
            raise UserError(
                f"{self.who}: server {url} sent unusable prompt log-probs "
                f"({error}); it must return vLLM's prompt_logprobs"
            ) from None


def served_model(client: ServerClient, model: str | None) -> dict[str, Any]:
    """The `/v1/models` entry of `model` (or of the server's only model)."""
    listed = client.get("/v1/models").get("data") or []
    ids = [str(entry.get("id")) for entry in listed]
    if model is None:
        if len(listed) != 1:
            raise UserError(
                f"{client.who}: server {client.base_url} serves {ids}; name one as the model"
            )
        return listed[0]
    for entry in listed:
        if entry.get("id") == model:
            return entry
    raise UserError(
        f"{client.who}: server {client.base_url} does not serve {model!r} (it serves {ids})"
    )


def server_urls(name: str, base_url: str | Sequence[str] | None) -> list[str]:
    """The servers' base URLs: the argument, else `POLYDISTILL_TEACHER_<NAME>_URL` (several
    comma-separated)."""
    if base_url is None:
        base_url = os.environ.get(env_name(name, "URL"), "").split(",")
    urls = [base_url] if isinstance(base_url, str) else list(base_url)
    urls = [url.strip().rstrip("/") for url in urls if url.strip()]
    if not urls:
        raise UserError(f"teacher {name!r}: no server URL; give one or set {env_name(name, 'URL')}")
    repeated = sorted({url for url in urls if urls.count(url) > 1})
    if repeated:
        raise UserError(f"teacher {name!r}: server URL listed twice: {', '.join(repeated)}")
    return urls


def same_model(pool: ServerPool, model: str | None) -> str:
    """The model id every server serves (`model`, or each server's only one); a server serving
    another is a one-line error naming it."""
    first = str(served_model(pool.clients[0], model)["id"])
    for client in pool.clients[1:]:
        found = str(served_model(client, model)["id"])
        if found != first:
            raise UserError(
                f"{pool.who}: server {client.base_url} serves model {found!r}, not {first!r} as "
                f"{pool.clients[0].base_url} does: every server of a teacher serves the same model"
            )
    return first


def served_teacher(
    name: str,
    tokenizer: PreTrainedTokenizerBase | Path,
    *,
    base_url: str | Sequence[str] | None = None,
    model: str | None = None,
    api_key: str | None = None,
    timeout_s: float = 300.0,
    retries: int = 5,
    backoff_s: float = 0.5,
    concurrency: int = 4,
    batch_size: int = 16,
    transport: httpx.BaseTransport | None = None,
    template: str | None = None,
) -> ServedTeacher:
    """A served model as a teacher, on one server or several of the same model (`base_url`: a
    URL or a list), its tokenizer (or checkpoint directory, with `template` as `load_tokenizer`
    takes it) probed against every server first; `concurrency` is per server."""
    who = f"teacher {name!r}"
    urls = server_urls(name, base_url)
    if isinstance(tokenizer, Path):
        tokenizer = load_tokenizer(tokenizer, who, template)
    api_key = api_key or os.environ.get(env_name(name, "API_KEY"))
    with ExitStack() as opened:
        clients = []
        for url in urls:
            client = ServerClient(
                url,
                api_key=api_key,
                who=who,
                timeout_s=timeout_s,
                retries=retries,
                backoff_s=backoff_s,
                concurrency=concurrency,
                transport=transport,
            )
            opened.callback(client.close)
            clients.append(client)
        pool = ServerPool(clients, retries=retries, backoff_s=backoff_s)
        found = same_model(pool, model or os.environ.get(env_name(name, "MODEL")))
        teacher = ServedTeacher(name, tokenizer, pool, found, batch_size)
        teacher.probe_tokenizers()
        opened.pop_all()  # the teacher owns the clients now
    return teacher
