"""The served teacher against a real vLLM (CPU build) and against a fake server for failures.

The real server runs the tiny world's gemma teacher (`gemma_checkpoint`; vLLM takes Gemma 3 and
Qwen 3 world teachers, and refuses world gpt-oss teachers: its gpt-oss needs YaRN rope
parameters); its rows and greedy answers must equal the same checkpoint loaded locally (same
top-k ids, log-probs within 1e-3). The fake server stands in for vLLM where failures are
provoked.
"""

import re
from pathlib import Path

import pytest
from fake_vllm import fake_vllm
from served_checks import ANSWERS, PROMPTS, assert_same_rows, eos_silenced
from vllm_server import free_port, served_context_length, vllm_server

from polydistill.chat import PlainText
from polydistill.data.records import Turn
from polydistill.errors import UserError
from polydistill.teachers.checkpoint import load_tokenizer
from polydistill.teachers.local import local_teacher
from polydistill.teachers.served import env_name, sample_seed, served_teacher


@pytest.fixture(scope="module")
def qwen_local(tiny_world):
    return local_teacher("qwen", tiny_world.teachers["qwen"], batch_size=8)


@pytest.fixture(scope="module")
def gemma_checkpoint(tiny_world, tmp_path_factory) -> Path:
    """The world's gemma teacher, its answers running on (`eos_silenced`)."""
    out = tmp_path_factory.mktemp("served") / "gemma"
    return eos_silenced(tiny_world.teachers["gemma"], out, "gemma")


@pytest.fixture(scope="module")
def gemma_local(gemma_checkpoint):
    return local_teacher("gemma", gemma_checkpoint, batch_size=8)


@pytest.fixture(scope="module")
def vllm_gemma(gemma_checkpoint):
    with vllm_server(gemma_checkpoint, gemma_checkpoint.parent / "vllm.log") as base_url:
        yield base_url


@pytest.fixture(scope="module")
def gemma_served(vllm_gemma, gemma_checkpoint):
    teacher = served_teacher("gemma", gemma_checkpoint, base_url=vllm_gemma)
    yield teacher
    teacher.close()


@pytest.mark.slow
def test_vllm_scores_equal_the_local_teachers(gemma_served, gemma_local):
    for top_k, temperature in [(8, 1.0), (3, 2.0)]:
        batches: list[tuple[int, int]] = []
        served = gemma_served.score(
            PROMPTS,
            ANSWERS,
            top_k=top_k,
            temperature=temperature,
            on_batch=lambda rows, tokens, seen=batches: seen.append((rows, tokens)),
        )
        local = gemma_local.score(PROMPTS, ANSWERS, top_k=top_k, temperature=temperature)
        assert_same_rows(served, local)
        assert sum(rows for rows, _ in batches) == len(PROMPTS)


@pytest.mark.slow
def test_vllm_greedy_answers_equal_the_local_teachers(gemma_served, gemma_local):
    served = gemma_served.complete(PROMPTS, samples=1, max_new_tokens=12, seed=0)
    assert all(served[0]), "greedy answers should run on for the check to bite"
    assert served == gemma_local.complete(PROMPTS, samples=1, max_new_tokens=12, seed=0)
    sampled = gemma_served.complete(PROMPTS, samples=3, max_new_tokens=12, seed=7)
    assert sampled[0] == served[0] and sampled[1] != sampled[2]
    # Seeded: the same call again gives the same samples.
    assert sampled == gemma_served.complete(PROMPTS, samples=3, max_new_tokens=12, seed=7)


@pytest.mark.slow
def test_vllm_fingerprint_names_the_served_model(gemma_served, gemma_local, gemma_checkpoint):
    fingerprint = gemma_served.fingerprint()
    assert fingerprint["source"] == "served"
    assert fingerprint["model"] == str(gemma_checkpoint)
    for key in ("tokenizer", "chat_template"):
        assert fingerprint[key] == gemma_local.fingerprint()[key]


@pytest.mark.slow
def test_vllm_states_the_context_it_was_started_with(gemma_served, gemma_checkpoint):
    """What the run's pre-check asks (`/v1/models` `max_model_len`) is vLLM's `--max-model-len`."""
    assert gemma_served.context_length() == served_context_length(gemma_checkpoint)


@pytest.mark.slow
def test_vllm_refuses_a_different_tokenizer(vllm_gemma, tiny_world):
    with pytest.raises(
        UserError,
        match=re.escape(f"server {vllm_gemma} tokenizer differs from the configured one at id #"),
    ):
        served_teacher("gemma", tiny_world.teachers["qwen"], base_url=vllm_gemma)


def test_unreachable_server_is_one_line_with_the_url_after_bounded_retries(tiny_world):
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(UserError) as error:
        served_teacher("qwen", tiny_world.teachers["qwen"], base_url=url, retries=2, backoff_s=0.01)
    message = str(error.value)
    assert "\n" not in message
    assert url in message and "unreachable after 3 attempts" in message


def test_no_url_names_the_environment_variable(tiny_world, monkeypatch):
    monkeypatch.delenv("POLYDISTILL_TEACHER_MY_QWEN_URL", raising=False)
    assert env_name("my-qwen", "URL") == "POLYDISTILL_TEACHER_MY_QWEN_URL"
    with pytest.raises(UserError, match="POLYDISTILL_TEACHER_MY_QWEN_URL"):
        served_teacher("my-qwen", tiny_world.teachers["qwen"])


@pytest.fixture(scope="module")
def fake(qwen_local):
    with fake_vllm(qwen_local.model, qwen_local.tokenizer, api_key="secret-key") as server:
        yield server


@pytest.fixture
def fake_served(fake, tiny_world, monkeypatch):
    # Where the server is and its key come from the environment.
    monkeypatch.setenv(env_name("qwen", "URL"), fake.base_url)
    monkeypatch.setenv(env_name("qwen", "API_KEY"), "secret-key")
    teacher = served_teacher("qwen", tiny_world.teachers["qwen"], retries=3, backoff_s=0.01)
    fake.failures.clear()
    yield teacher
    teacher.close()


def test_5xx_and_429_are_retried_with_backoff(fake, fake_served, qwen_local):
    fake.failures += [503, 429, 500]
    before = fake.completion_calls
    served = fake_served.score(PROMPTS, ANSWERS, top_k=5, temperature=1.0)
    assert fake.completion_calls - before == 4
    assert_same_rows(served, qwen_local.score(PROMPTS, ANSWERS, top_k=5, temperature=1.0))


def test_retries_are_bounded(fake, fake_served):
    fake.failures += [502] * 4
    with pytest.raises(
        UserError,
        match=re.escape(f"{fake.base_url}/v1/completions still answered 502 after 4 attempts"),
    ):
        fake_served.score(PROMPTS[:1], ANSWERS[:1], top_k=5, temperature=1.0)


def test_a_bad_request_is_not_retried(fake, fake_served):
    fake.failures += [400, 503]
    before = fake.completion_calls
    with pytest.raises(UserError, match="answered 400: failing on purpose with 400"):
        fake_served.score(PROMPTS[:1], ANSWERS[:1], top_k=5, temperature=1.0)
    assert fake.completion_calls - before == 1


def test_a_wrong_api_key_is_refused_at_once(fake, tiny_world):
    with pytest.raises(UserError, match="answered 401: bad key"):
        served_teacher("qwen", tiny_world.teachers["qwen"], base_url=fake.base_url, api_key="x")


def test_the_fake_refuses_a_different_tokenizer(fake, tiny_world):
    with pytest.raises(
        UserError, match=re.escape(f"server {fake.base_url} tokenizer differs from the configured")
    ):
        served_teacher(
            "qwen",
            load_tokenizer(tiny_world.teachers["gptoss"], "gptoss"),
            base_url=fake.base_url,
            api_key="secret-key",
        )


def test_full_vocabulary_rescaling_matches_the_local_temperature(fake_served, qwen_local):
    served = fake_served.score(PROMPTS, ANSWERS, top_k=4, temperature=0.5)
    assert_same_rows(served, qwen_local.score(PROMPTS, ANSWERS, top_k=4, temperature=0.5))


def test_conversations_and_text_travel_as_the_local_rendering(fake, fake_served, qwen_local):
    """A served teacher renders here and sends ids: a system turn, earlier turns and
    completion-style text reach the server as the local teacher reads them (rows and greedy
    answers equal), and a prompt's whole conversation seeds its samples."""
    conversations = [
        (Turn("system", "Answer briefly."), Turn("user", PROMPTS[0])),
        (Turn("user", "reverse: ab"), Turn("assistant", "ba"), Turn("user", PROMPTS[2])),
        PlainText("Where does Tomuqa"),
    ]
    prompts = [*conversations, PROMPTS[0]]
    answers = [ANSWERS[0], ANSWERS[2], " Ruza live?", ANSWERS[0]]
    served = fake_served.score(prompts, answers, top_k=5, temperature=1.0)
    local = qwen_local.score(prompts, answers, top_k=5, temperature=1.0)
    assert_same_rows(served, local)
    # the rows are those of the whole conversation: a system turn changes the prompt's ids
    assert list(served[0].ids[: served[0].start]) != list(served[3].ids[: served[3].start])
    assert list(served[0].ids[served[0].start :]) == list(served[3].ids[served[3].start :])
    settings = {"samples": 1, "max_new_tokens": 4, "seed": 0}
    assert fake_served.complete(prompts, **settings) == qwen_local.complete(prompts, **settings)
    assert sample_seed(0, conversations[0], 1) != sample_seed(0, PROMPTS[0], 1)
