"""A served teacher on several servers (`teachers.server_pool`), against fake vLLM servers: the
work is spread by free slots, a failing server's requests move to the others, the readings are
those of one server and of the local teacher, and servers that disagree are refused by name.
The same against two real vLLM servers: tests/teachers/test_teachers_served_pool.py."""

import re

import pytest
from fake_vllm import fake_vllm
from served_checks import ANSWERS, PROMPTS, assert_same_rows
from vllm_server import free_port

from polydistill.errors import UserError
from polydistill.teachers.checkpoint import load_tokenizer
from polydistill.teachers.local import local_teacher
from polydistill.teachers.served import env_name, served_teacher

# Twice the prompts, one per request: enough requests to reach every server.
MANY_PROMPTS, MANY_ANSWERS = PROMPTS * 2, ANSWERS * 2
FAST = {"retries": 3, "backoff_s": 0.01, "batch_size": 1}


@pytest.fixture(scope="module")
def qwen_local(tiny_world):
    return local_teacher("qwen", tiny_world.teachers["qwen"], batch_size=8)


@pytest.fixture(scope="module")
def fakes(qwen_local):
    with (
        fake_vllm(qwen_local.model, qwen_local.tokenizer, model_id="qwen") as a,
        fake_vllm(qwen_local.model, qwen_local.tokenizer, model_id="qwen") as b,
    ):
        yield a, b


@pytest.fixture
def servers(fakes):
    for fake in fakes:
        fake.failures.clear()
        fake.delay_s = 0.0
        fake.max_model_len = None
    return fakes


def teacher_on(urls, tiny_world, **settings):
    return served_teacher("qwen", tiny_world.teachers["qwen"], base_url=urls, **settings)


def test_the_context_is_the_least_the_servers_state(servers, tiny_world):
    a, b = servers
    teacher = teacher_on([a.base_url, b.base_url], tiny_world, **FAST)
    try:
        assert teacher.context_length() is None  # neither states one
        a.max_model_len = 96
        assert teacher.context_length() == 96  # one states it: the other is not assumed larger
        b.max_model_len = 64
        assert teacher.context_length() == 64
    finally:
        teacher.close()


def test_two_servers_read_as_one_and_as_the_local_teacher(servers, tiny_world, qwen_local):
    a, b = servers
    reference = qwen_local.score(MANY_PROMPTS, MANY_ANSWERS, top_k=5, temperature=1.0)
    one = teacher_on([a.base_url], tiny_world, **FAST)
    two = teacher_on([a.base_url, b.base_url], tiny_world, concurrency=1, **FAST)
    try:
        through_two = two.score(MANY_PROMPTS, MANY_ANSWERS, top_k=5, temperature=1.0)
        assert all(two.pool.served), f"every server should have answered: {two.pool.served}"
        assert_same_rows(
            through_two, one.score(MANY_PROMPTS, MANY_ANSWERS, top_k=5, temperature=1.0)
        )
        assert_same_rows(through_two, reference)
        greedy = two.complete(MANY_PROMPTS, samples=1, max_new_tokens=6, seed=0)
        assert greedy == one.complete(MANY_PROMPTS, samples=1, max_new_tokens=6, seed=0)
        assert greedy == qwen_local.complete(MANY_PROMPTS, samples=1, max_new_tokens=6, seed=0)
        assert two.fingerprint() == one.fingerprint()
    finally:
        one.close()
        two.close()


def test_a_failing_server_s_requests_move_to_the_other(servers, tiny_world, qwen_local):
    a, b = servers
    a.failures += [503] * 100
    teacher = teacher_on([a.base_url, b.base_url], tiny_world, concurrency=2, **FAST)
    try:
        rows = teacher.score(MANY_PROMPTS, MANY_ANSWERS, top_k=5, temperature=1.0)
        assert teacher.pool.served == [0, len(MANY_PROMPTS)]
        assert teacher.pool.failed[0] > 0 and teacher.pool.failed[1] == 0
    finally:
        teacher.close()
    assert a.completion_calls > 0, "the failing server was never tried: the test proves nothing"
    assert_same_rows(rows, qwen_local.score(MANY_PROMPTS, MANY_ANSWERS, top_k=5, temperature=1.0))


def test_a_slow_server_gets_less_of_the_work(servers, tiny_world):
    a, b = servers
    a.delay_s = 0.5
    teacher = teacher_on([a.base_url, b.base_url], tiny_world, concurrency=1, **FAST)
    try:
        teacher.score(MANY_PROMPTS * 2, MANY_ANSWERS * 2, top_k=5, temperature=1.0)
        slow, fast = teacher.pool.served
    finally:
        teacher.close()
    assert 0 < slow < fast and slow + fast == 4 * len(PROMPTS)


def test_every_server_down_is_one_line_naming_them(tiny_world):
    urls = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    with pytest.raises(UserError) as error:
        teacher_on(urls, tiny_world, retries=1, backoff_s=0.01)
    message = str(error.value)
    assert "\n" not in message
    assert urls[0] in message and "unreachable after 2 attempts" in message


def test_retries_spent_across_servers_name_them_all(servers, tiny_world):
    a, b = servers
    teacher = teacher_on([a.base_url, b.base_url], tiny_world, concurrency=1, **FAST)
    a.failures += [502] * 10
    b.failures += [502] * 10
    try:
        with pytest.raises(UserError) as error:
            teacher.score(PROMPTS[:1], ANSWERS[:1], top_k=5, temperature=1.0)
    finally:
        teacher.close()
    message = str(error.value)
    assert "\n" not in message and "still answered 502 after 4 attempts" in message
    assert f"{a.base_url}/v1/completions" in message and f"{b.base_url}/v1/completions" in message


def test_a_server_with_another_tokenizer_is_refused_by_name(fakes, qwen_local, tiny_world):
    a, _ = fakes
    other = load_tokenizer(tiny_world.teachers["gptoss"], "gptoss")
    with (
        fake_vllm(qwen_local.model, other, model_id="qwen") as odd,
        pytest.raises(UserError) as error,
    ):
        teacher_on([a.base_url, odd.base_url], tiny_world)
    message = str(error.value)
    assert "\n" not in message
    assert re.search(
        rf"server {re.escape(odd.base_url)} tokenizer differs from the configured one at id #\d+",
        message,
    )


def test_a_server_with_another_model_is_refused_by_name(fakes, qwen_local, tiny_world):
    a, _ = fakes
    with fake_vllm(qwen_local.model, qwen_local.tokenizer, model_id="qwen-base") as odd:
        with pytest.raises(
            UserError,
            match=re.escape(f"server {odd.base_url} serves model 'qwen-base', not 'qwen'"),
        ):
            teacher_on([a.base_url, odd.base_url], tiny_world)
        with pytest.raises(
            UserError, match=re.escape(f"server {odd.base_url} does not serve 'qwen'")
        ):
            teacher_on([a.base_url, odd.base_url], tiny_world, model="qwen")


def test_the_environment_lists_servers_comma_separated(servers, tiny_world, monkeypatch):
    a, b = servers
    monkeypatch.setenv(env_name("qwen", "URL"), f"{a.base_url}, {b.base_url}/")
    teacher = served_teacher("qwen", tiny_world.teachers["qwen"])
    try:
        assert teacher.pool.urls == [a.base_url, b.base_url]
    finally:
        teacher.close()
    monkeypatch.setenv(env_name("qwen", "URL"), f"{a.base_url},{a.base_url}")
    with pytest.raises(UserError, match="server URL listed twice"):
        served_teacher("qwen", tiny_world.teachers["qwen"])
