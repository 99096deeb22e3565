"""A served teacher on two real vLLM servers (the CPU build) of the tiny world's gemma teacher:
readings through both equal readings through one and the local teacher's, whichever server
answers each request; a server killed mid-run leaves the result unchanged; a server with another
tokenizer behind the same name is refused by name. (Each vLLM server costs about a minute to
start on two cores; both start at once, once for the module.)"""

import re
import time
from pathlib import Path

import pytest
from fake_vllm import fake_vllm
from served_checks import ANSWERS, PROMPTS, assert_same_rows, eos_silenced
from vllm_server import vllm_servers

from polydistill.errors import UserError
from polydistill.teachers.checkpoint import load_checkpoint, load_tokenizer
from polydistill.teachers.local import local_teacher
from polydistill.teachers.served import served_teacher

# Three times the prompts, one answer per request: every server gets requests.
MANY_PROMPTS, MANY_ANSWERS = PROMPTS * 3, ANSWERS * 3
SETTINGS = {"batch_size": 1, "concurrency": 2, "retries": 4, "backoff_s": 0.05}


@pytest.fixture(scope="module")
def gemma_checkpoint(tiny_world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("served_pool") / "gemma"
    return eos_silenced(tiny_world.teachers["gemma"], out, "gemma")


@pytest.fixture(scope="module")
def gemma_local(gemma_checkpoint):
    return local_teacher("gemma", gemma_checkpoint, batch_size=8)


@pytest.fixture(scope="module")
def two_vllm(gemma_checkpoint):
    logs = [gemma_checkpoint.parent / f"vllm-{i}.log" for i in range(2)]
    with vllm_servers(gemma_checkpoint, logs) as servers:
        yield servers


def on(servers, checkpoint):
    return served_teacher("gemma", checkpoint, base_url=[s.base_url for s in servers], **SETTINGS)


@pytest.mark.slow
def test_two_servers_read_as_one_and_as_the_local_teacher(two_vllm, gemma_checkpoint, gemma_local):
    one, two = on(two_vllm[:1], gemma_checkpoint), on(two_vllm, gemma_checkpoint)
    try:
        for top_k, temperature in [(8, 1.0), (3, 2.0)]:
            through_two = two.score(
                MANY_PROMPTS, MANY_ANSWERS, top_k=top_k, temperature=temperature
            )
            through_one = one.score(
                MANY_PROMPTS, MANY_ANSWERS, top_k=top_k, temperature=temperature
            )
            assert_same_rows(through_two, through_one)
            local = gemma_local.score(
                MANY_PROMPTS, MANY_ANSWERS, top_k=top_k, temperature=temperature
            )
            assert_same_rows(through_two, local)
        assert all(two.pool.served), f"both servers should have answered: {two.pool.served}"
        greedy = two.complete(MANY_PROMPTS, samples=1, max_new_tokens=12, seed=0)
        assert all(greedy[0]), "greedy answers should run on for the check to bite"
        assert greedy == one.complete(MANY_PROMPTS, samples=1, max_new_tokens=12, seed=0)
        assert greedy == gemma_local.complete(MANY_PROMPTS, samples=1, max_new_tokens=12, seed=0)
        # seeded per request: samples do not depend on which server drew them
        sampled = two.complete(PROMPTS, samples=3, max_new_tokens=12, seed=7)
        assert sampled[1] != sampled[2]
        assert sampled == one.complete(PROMPTS, samples=3, max_new_tokens=12, seed=7)
        assert two.fingerprint() == one.fingerprint()
    finally:
        one.close()
        two.close()


@pytest.mark.slow
def test_a_server_with_another_tokenizer_is_refused_by_name(two_vllm, gemma_checkpoint, tiny_world):
    """A fake server, serving the same model id, with the qwen teacher's tokenizer."""
    model, _ = load_checkpoint(gemma_checkpoint, "gemma")
    other = load_tokenizer(tiny_world.teachers["qwen"], "qwen")
    with fake_vllm(model, other, model_id=str(gemma_checkpoint)) as odd:
        urls = [two_vllm[0].base_url, odd.base_url]
        with pytest.raises(UserError) as error:
            served_teacher("gemma", gemma_checkpoint, base_url=urls)
    message = str(error.value)
    assert "\n" not in message
    assert re.search(
        rf"server {re.escape(odd.base_url)} tokenizer differs from the configured one at id #\d+",
        message,
    ), message


@pytest.mark.slow
def test_a_server_killed_mid_run_leaves_the_result_unchanged(
    two_vllm, gemma_checkpoint, gemma_local
):
    """Last in the module: it kills the second server. The kill happens in the second server's
    own request path, as its second request is sent (once its first has answered), so that
    request meets a dead server and must fail over, whatever the machine's load. (Killing it
    from the consumer's progress callback raced: a first request that is slow on a cold server
    let the other server finish all the work first.)"""
    two = on(two_vllm, gemma_checkpoint)
    second_server = two.pool.clients[1]
    calls_to_second: list[int] = []
    attempt = second_server.attempt

    def kill_then_attempt(method, path, body):
        calls_to_second.append(1)
        if len(calls_to_second) == 2:
            # its first request may still be in flight: let it answer first
            deadline = time.monotonic() + 120
            while not two.pool.served[1] and time.monotonic() < deadline:
                time.sleep(0.01)
            two_vllm[1].kill()
        return attempt(method, path, body)

    second_server.attempt = kill_then_attempt
    try:
        rows = two.score(MANY_PROMPTS * 2, MANY_ANSWERS * 2, top_k=8, temperature=1.0)
        first, second = two.pool.served
        failed = two.pool.failed
    finally:
        two.close()
    assert two_vllm[1].process.poll() is not None, "the second server should be dead"
    # how much each server took before the kill depends on the machine's load; every row came
    # from one of them, and the survivor took the killed one's remaining work
    assert first + second == len(rows) and first > 0 and second > 0
    assert failed[0] == 0 and failed[1] > 0, f"no request failed over: {failed}"
    local = gemma_local.score(MANY_PROMPTS * 2, MANY_ANSWERS * 2, top_k=8, temperature=1.0)
    assert_same_rows(rows, local)
