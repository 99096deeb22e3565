"""Pieces of the gateway against references: money arithmetic, key material, incremental
detokenization, sampling distributions (float64 reference), and the batching engine against
an unbatched dense forward pass."""

import asyncio
import json
from decimal import Decimal

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from polydistill.errors import UserError
from polydistill.serve.core.served_lineage import lineage_summary, load_lineage
from polydistill.serve.engines.base import Finished, PromptLogprobs, SamplingParams, TextDelta
from polydistill.serve.engines.incremental_text import IncrementalText
from polydistill.serve.engines.local import LocalEngine
from polydistill.serve.engines.sampling import choose_token, make_generator, sampling_distribution
from polydistill.serve.metering.keys import (
    digest_matches,
    key_digest,
    load_server_secret,
    new_key,
    public_id_of,
)
from polydistill.serve.metering.money import Price, micros_to_usd, request_cost, usd_to_micros
from polydistill.serve.metering.timeutil import duration_seconds, iso_time, parse_time_ms
from polydistill.serve.settings import load_settings, price_of


def test_dollars_parse_exactly_to_micros() -> None:
    assert usd_to_micros("12.345678") == 12_345_678
    assert usd_to_micros("0.1") + usd_to_micros("0.2") == usd_to_micros("0.3")
    assert micros_to_usd(1_234_567) == "1.234567" and micros_to_usd(5) == "0.000005"
    for bad in ("0.0000001", "-1", "nan", "abc", "inf"):
        with pytest.raises(UserError):
            usd_to_micros(bad)


@given(
    st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**9), st.integers(0, 10**9),
    st.integers(0, 10**4), st.integers(0, 10**4),
)  # fmt: skip
def test_request_cost_is_the_exact_ceiling_and_monotone(
    pi, po, in_price, out_price, extra_in, extra_out
) -> None:
    price = Price(in_price, out_price)
    exact = (Decimal(pi) * in_price + Decimal(po) * out_price) / 10**6
    cost = request_cost(price, pi, po)
    assert cost == int(exact.to_integral_value(rounding="ROUND_CEILING"))
    assert request_cost(price, pi + extra_in, po + extra_out) >= cost


def test_keys_are_random_prefixed_and_checked_by_hmac(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("POLYDISTILL_SERVER_SECRET", raising=False)
    key, public_id = new_key()
    assert key.startswith(f"pd_{public_id}_") and public_id_of(key) == public_id
    assert len({new_key()[0] for _ in range(100)}) == 100
    assert public_id_of("sk-something") is None and public_id_of(key[:20]) is None
    secret = load_server_secret(f"sqlite:///{tmp_path / 'g.db'}")
    assert (tmp_path / "g.db.secret").stat().st_mode & 0o777 == 0o600
    assert load_server_secret(f"sqlite:///{tmp_path / 'g.db'}") == secret
    # The same file whatever the URL's query (a busy timeout, say).
    assert load_server_secret(f"sqlite:///{tmp_path / 'g.db'}?timeout=1") == secret
    digest = key_digest(secret, key)
    assert len(digest) == 64 and key not in digest
    assert digest_matches(secret, key, digest) and not digest_matches(secret, key + "x", digest)
    with pytest.raises(UserError, match="POLYDISTILL_SERVER_SECRET"):
        load_server_secret("postgresql+psycopg://db/x")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(3, 399), min_size=1, max_size=30),
    st.lists(st.text(alphabet="abe o🙂", min_size=1, max_size=3), max_size=2),
)
def test_incremental_text_equals_full_decode_cut_at_first_stop(served, ids, stops) -> None:
    text = IncrementalText(served.decode, tuple(stops))
    streamed = "".join(text.push(i) for i in ids) + text.flush()
    full = served.decode(ids)
    cut = min((full.find(s) for s in stops if s in full), default=-1)
    if cut >= 0:
        assert text.stopped and streamed == full[:cut]
    else:
        assert streamed == full


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-8, 8), min_size=2, max_size=12),
    st.floats(0.1, 2.0),
    st.floats(0.05, 1.0),
)
def test_sampling_distribution_matches_a_float64_reference(logits, temperature, top_p) -> None:
    scaled = np.array(logits, dtype=np.float64) / temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    before = np.cumsum(probs[order]) - probs[order]
    keep = np.zeros_like(probs, dtype=bool)
    keep[order[before < top_p - 1e-6]] = True
    keep[order[0]] = True
    reference = np.where(keep, probs, 0.0)
    reference /= reference.sum()
    got = sampling_distribution(torch.tensor(logits, dtype=torch.float32), temperature, top_p)
    # Tokens within float32 rounding of the threshold may fall either way, and so may the
    # ranks of probabilities within float32 rounding of each other (e.g. logits 0 and 2e-16).
    borderline = np.abs(before - top_p) < 1e-5
    near_ties = np.abs(np.diff(probs[order])) < 1e-6
    if not borderline.any() and not near_ties.any():
        np.testing.assert_allclose(got.double().numpy(), reference, atol=1e-5)


def test_choose_token_is_greedy_at_zero_and_reproducible_with_a_seed() -> None:
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    assert choose_token(logits, 0.0, 1.0, make_generator(1)) == 1

    def draws(seed: int, count: int = 20) -> list[int]:
        generator = make_generator(seed)
        return [choose_token(logits, 1.0, 1.0, generator) for _ in range(count)]

    assert draws(7) == draws(7) and draws(7) != draws(8)
    # top_p just above the largest mass keeps only the two most likely tokens.
    assert set(draws(3, 300)) == {0, 1, 2, 3} and {
        choose_token(logits, 1.0, 0.6, make_generator(s)) for s in range(50)
    } == {1, 2}


def _run_engine(engine: LocalEngine, prompts, params):
    async def one(prompt, p):
        return [event async for event in engine.generate(prompt, p)]

    async def main():
        await engine.start()
        try:
            return await asyncio.gather(*(one(p, params[i]) for i, p in enumerate(prompts)))
        finally:
            await engine.close()

    return asyncio.run(main())


def test_batched_engine_matches_an_unbatched_dense_reference(served, causal_lm) -> None:
    prompts = [
        served.encode(t) for t in ("The quick brown fox", "A", "Prices are counted in integer")
    ]
    params = [SamplingParams(max_tokens=5, temperature=0.0, logprobs=3, prompt_logprobs=True)] * 3
    engine = LocalEngine(causal_lm, served, max_batch_size=8, batch_wait_s=0.2)
    results = _run_engine(engine, prompts, params)
    assert engine.batch_sizes == [3]
    for prompt, events in zip(prompts, results, strict=True):
        ids = list(prompt)
        with torch.no_grad():
            full = torch.log_softmax(causal_lm(torch.tensor([ids])).logits[0].double(), -1)
        prompt_reference = [float(full[i - 1, ids[i]]) for i in range(1, len(ids))]
        generated = []
        with torch.no_grad():
            for _ in range(5):
                row = torch.log_softmax(causal_lm(torch.tensor([ids])).logits[0, -1].double(), -1)
                generated.append((int(row.argmax()), float(row.max()), row))
                ids.append(generated[-1][0])
        [prompt_event] = [e for e in events if isinstance(e, PromptLogprobs)]
        assert prompt_event.entries[0].logprob is None
        np.testing.assert_allclose(
            [e.logprob for e in prompt_event.entries[1:]], prompt_reference, atol=1e-4
        )
        deltas = [e for e in events if isinstance(e, TextDelta)]
        np.testing.assert_allclose(
            [d.logprobs[0].logprob for d in deltas], [g[1] for g in generated], atol=1e-4
        )
        top = deltas[0].logprobs[0].top
        expected_top = torch.topk(generated[0][2], 3)
        np.testing.assert_allclose([lp for _, lp in top], expected_top.values.numpy(), atol=1e-4)
        assert "".join(d.text for d in deltas) == served.decode([g[0] for g in generated])
        assert events[-1] == Finished("length", 5)


def test_engine_stops_at_stop_strings_and_cancels(served, causal_lm) -> None:
    prompt = served.encode("The quick brown fox")
    free = _run_engine(
        LocalEngine(causal_lm, served), [prompt], [SamplingParams(max_tokens=8, temperature=0.0)]
    )[0]
    text = "".join(e.text for e in free if isinstance(e, TextDelta))
    stop = text[3:5]
    stopped = _run_engine(
        LocalEngine(causal_lm, served),
        [prompt],
        [SamplingParams(max_tokens=8, temperature=0.0, stop=(stop,))],
    )[0]
    stopped_text = "".join(e.text for e in stopped if isinstance(e, TextDelta))
    assert stopped_text == text[: text.find(stop)] and stopped[-1].reason == "stop"

    async def cancel_early():
        engine = LocalEngine(causal_lm, served)
        await engine.start()
        stream = engine.generate(prompt, SamplingParams(max_tokens=200, temperature=1.0))
        first = await anext(stream)
        await stream.aclose()  # what a disconnecting client does
        again = [e async for e in engine.generate(prompt, SamplingParams(max_tokens=2))]
        await engine.close()
        return first, again

    first, again = asyncio.run(cancel_early())
    assert isinstance(first, TextDelta) and again[-1] == Finished("length", 2)


def test_lineage_files_and_settings(tmp_path) -> None:
    model = tmp_path / "run" / "student"
    model.mkdir(parents=True)
    teachers = [{"name": "g", "family": "gemma", "share": 0.75}, {"name": "o", "family": "gpt-oss"}]
    # A run's fusion accounting is not a lineage: never read as one (issue 22).
    (tmp_path / "run" / "contributions.json").write_text(
        json.dumps({"teachers": ["g", "o"], "strategy": "evidence", "mass": {}})
    )
    assert load_lineage(model) is None
    (tmp_path / "run" / "lineage.json").write_text(json.dumps({"teachers": teachers, "extra": 1}))
    summary = lineage_summary(load_lineage(model))
    assert summary == {
        "student": None,
        "verified": False,  # a hand-written, unsigned lineage
        "strategy": None,
        "teachers": ["g", "o"],
        "families": ["gemma", "gpt-oss"],
        "shares": {"g": 0.75},
    }
    (model / "lineage.json").write_text(json.dumps({"teachers": [{"name": "g"}]}))
    with pytest.raises(
        UserError, match=r"^lineage file .*/student/lineage\.json: teachers\.0\.family"
    ):
        load_lineage(model)
    config = tmp_path / "gateway.yaml"
    config.write_text("prices:\n  student: {input: '0.50', output: 1.5}\ncaps: {max_n: 2}\n")
    loaded = load_settings(config)
    assert price_of(loaded, "student") == Price(500_000, 1_500_000) and loaded.caps.max_n == 2
    assert price_of(loaded, "other") == Price()
    config.write_text("caps: {max_logprobs: 9}\n")
    with pytest.raises(UserError, match=r"caps\.max_logprobs"):
        load_settings(config)


def test_settings_keep_the_heartbeat_ahead_of_the_sweep(tmp_path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("reservation_ttl_s: 30\nsweep_interval_s: 10\n")
    assert load_settings(config).sweep_interval_s == 10
    config.write_text("reservation_ttl_s: 30\nsweep_interval_s: 11\n")
    with pytest.raises(UserError, match=r"gateway.yaml: sweep_interval_s must be at most a third"):
        load_settings(config)


def test_times_and_durations() -> None:
    assert duration_seconds("15m") == 900 and duration_seconds("2w") == 1_209_600
    assert parse_time_ms("7d", 10**12, future=False) == 10**12 - 7 * 86_400_000
    assert parse_time_ms("2026-01-01", 0, future=True) == 1_767_225_600_000
    assert iso_time(1_767_225_600_123) == "2026-01-01T00:00:00.123Z"
    with pytest.raises(UserError):
        parse_time_ms("next tuesday", 0, future=True)
