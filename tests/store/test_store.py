"""The capture store: codec against float64, capture and read-back against the live teachers of
the tiny world, resuming, sharding and merging, damaged shards, full disks and every refusal."""

import errno
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from repo_paths import TINY

from polydistill.chat import PlainText
from polydistill.data.records import Turn
from polydistill.errors import UserError
from polydistill.store import shards as shards_module
from polydistill.store.blocks import block_readings
from polydistill.store.cached import open_store, store_teachers
from polydistill.store.capture import SHARDS_DIR, capture_store, merge_store
from polydistill.store.codec import LEVELS, decode_topk, encode_topk, level_error_bound
from polydistill.store.manifest import block_seed
from polydistill.store.shards import shard_files
from polydistill.teachers.local import local_fingerprint, local_teacher
from polydistill.teachers.readings import gather_readings

pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: one thread is fastest

SETTINGS = {"top_k": 16, "temperature": 1.0, "samples": 2, "max_new_tokens": 6, "seed": 3}
BLOCK = 8
NAMES = ("gemma", "gptoss", "qwen")


def random_rows(rng, positions: int, k: int, vocab: int, spread: float):
    """Top-k ids and log-probs (float64) of random distributions over `vocab`, logit scale
    `spread`."""
    logits = rng.standard_normal((positions, vocab)) * spread
    full = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    kept = np.argpartition(-full, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(full, kept, axis=1), axis=1)
    ids = np.take_along_axis(kept, order, axis=1)
    return ids, np.take_along_axis(full, ids, axis=1)


def kl_topk_tail(p_logprobs: np.ndarray, q_logprobs: np.ndarray) -> np.ndarray:
    """KL over the k kept ids plus one tail bucket, per row, in float64."""
    p, q = np.exp(p_logprobs.astype(np.float64)), np.exp(q_logprobs.astype(np.float64))
    p_tail = np.clip(1 - p.sum(1), 1e-300, None)
    q_tail = np.clip(1 - q.sum(1), 1e-300, None)
    return (p * (np.log(p) - np.log(q))).sum(1) + p_tail * (np.log(p_tail) - np.log(q_tail))


@pytest.mark.parametrize("vocab,spread", [(1000, 1.0), (1000, 6.0), (70_000, 3.0)])
def test_codec_round_trip_against_float64(vocab, spread):
    rng = np.random.default_rng(vocab + int(spread))
    k = 64
    ids, logprobs = random_rows(rng, 100, k, vocab, spread)
    packed = encode_topk(ids, logprobs.astype(np.float32), vocab)
    assert len(packed.id_planes) == (2 if vocab <= 65536 else 3)
    decoded_ids, decoded = decode_topk(packed, k)
    np.testing.assert_array_equal(decoded_ids, ids)
    assert decoded.dtype == np.float32 and (np.diff(decoded, axis=1) <= 0).all()
    below = logprobs[:, :1] - logprobs
    decoded_below = decoded[:, :1].astype(np.float64) - decoded
    inside = below < LEVELS[-1]
    error = np.abs(decoded_below - below)[inside]
    assert (error <= level_error_bound(below[inside]) + 1e-5).all()
    # The kept mass (hence the tail) survives up to float16 rounding of its log.
    kept = np.logaddexp.reduce(logprobs, axis=1)
    np.testing.assert_allclose(np.logaddexp.reduce(decoded, axis=1), kept, rtol=1e-3, atol=1e-4)
    assert kl_topk_tail(logprobs, decoded).max() < 3e-4


def test_codec_refuses_ids_outside_the_vocabulary():
    with pytest.raises(ValueError, match="outside the vocabulary of 10"):
        encode_topk(np.array([[3, 10]]), np.array([[-0.1, -3.0]]), 10)


# ---- capture and read back, on the tiny world's teachers -------------------------------------


@pytest.fixture(scope="module")
def teachers(tiny_world):
    return [local_teacher(name, tiny_world.teachers[name], 64) for name in NAMES]


@pytest.fixture(scope="module")
def prompts(tiny_world):
    return [
        e.prompt
        for domain in ("arithmetic", "facts", "strings")
        for e in tiny_world.train[domain][:7]
    ]


@pytest.fixture(scope="module")
def captured(tmp_path_factory, teachers, prompts):
    out = tmp_path_factory.mktemp("store") / "store"
    done = capture_store(teachers, prompts, out, **SETTINGS, block_size=BLOCK, show_progress=False)
    assert done
    return out


@pytest.fixture(scope="module")
def live(teachers, prompts):
    """What the live teachers say, block by block as the capture asked them."""
    out = []
    for block, first in enumerate(range(0, len(prompts), BLOCK)):
        readings = gather_readings(
            teachers, prompts[first : first + BLOCK], **{**SETTINGS, "seed": block_seed(3, block)}
        )
        out.append((first, readings))
    return out


def shard_names(store: Path) -> list[str]:
    return sorted(p.name for paths in shard_files(store / SHARDS_DIR).values() for p in paths)


def test_store_teachers_give_back_the_live_teachers_rows(captured, live, prompts, tiny_world):
    store = open_store(captured)
    expected = {n: local_fingerprint(tiny_world.teachers[n], n) for n in NAMES}
    teachers = store_teachers(store, expected)
    read = gather_readings(teachers, prompts, **SETTINGS)
    candidates = [(first + c.prompt, c.text, c.authors) for first, r in live for c in r.candidates]
    assert [(c.prompt, c.text, c.authors) for c in read.candidates] == candidates
    for name in NAMES:
        rows = [row for _, r in live for row in r.rows[name]]
        assert len(rows) == len(read.rows[name])
        for want, got in zip(rows, read.rows[name], strict=True):
            np.testing.assert_array_equal(got.ids, want.ids)
            assert got.start == want.start
            np.testing.assert_array_equal(got.top_ids, want.top_ids)
            np.testing.assert_array_equal(got.token_logprobs, want.token_logprobs)
            assert np.abs(got.top_logprobs[:, 0] - want.top_logprobs[:, 0]).max() < 0.01
            assert kl_topk_tail(want.top_logprobs, got.top_logprobs).max() < 1e-3
    fewer = teachers[2].score(prompts[:1], [read.candidates[0].text], top_k=4, temperature=1.0)
    np.testing.assert_array_equal(fewer[0].top_ids, read.rows["qwen"][0].top_ids[:, :4])


def test_resume_after_a_kill_between_blocks_and_mid_write(tmp_path, teachers, prompts, captured):
    out = tmp_path / "store"

    def killed_after_first(block: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        capture_store(
            teachers,
            prompts,
            out,
            **SETTINGS,
            block_size=BLOCK,
            show_progress=False,
            on_block=killed_after_first,
        )
    assert len(shard_names(out)) == 1
    leftover = out / SHARDS_DIR / ".block-000001.partial"
    leftover.write_bytes(b"PAR1 half a shard")
    redone: list[int] = []
    assert capture_store(
        teachers,
        prompts,
        out,
        **SETTINGS,
        block_size=BLOCK,
        show_progress=False,
        on_block=redone.append,
    )
    assert redone == [1, 2] and not leftover.exists()
    assert shard_names(out) == shard_names(captured)  # same bytes: no row lost or doubled


def test_shards_partition_the_blocks_and_merge_checks_completeness(
    tmp_path, teachers, prompts, captured
):
    out = tmp_path / "store"
    run = dict(**SETTINGS, block_size=BLOCK, show_progress=False)
    assert not capture_store(teachers, prompts, out, **run, shard=(0, 2))
    assert sorted(shard_files(out / SHARDS_DIR)) == [0, 2]
    with pytest.raises(UserError, match=r"1 of 3 blocks missing \(1\)"):
        merge_store(out)
    with pytest.raises(UserError, match="incomplete"):
        open_store(out)
    assert capture_store(teachers, prompts, out, **run, shard=(1, 2))
    assert shard_names(out) == shard_names(captured)
    assert len(merge_store(out)["shards"]) == 3


def test_a_resumed_capture_with_other_settings_is_refused(tmp_path, teachers, prompts, captured):
    out = tmp_path / "store"
    shutil.copytree(captured, out)
    with pytest.raises(UserError, match="captured with top_k 16, now 8"):
        capture_store(teachers, prompts, out, **{**SETTINGS, "top_k": 8}, block_size=BLOCK)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_shard_is_named(tmp_path, captured, damage):
    out = tmp_path / "store"
    shutil.copytree(captured, out)
    victim = sorted((out / SHARDS_DIR).glob("block-000001.*"))[0]
    data = bytearray(victim.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x40
    else:
        data = data[: len(data) - 100]
    victim.write_bytes(bytes(data))
    with pytest.raises(UserError, match=rf"store shard .*{victim.name}: checksum mismatch"):
        open_store(out)
    with pytest.raises(UserError, match=rf"{victim.name}: checksum mismatch"):
        merge_store(out)


def test_a_full_disk_stops_cleanly(tmp_path, teachers, prompts, monkeypatch):
    out = tmp_path / "store"

    real_fsync = os.fsync

    def no_space_for_shards(fd: int) -> None:
        """The shard's bytes are written; flushing them finds the disk full."""
        if ".block-" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(shards_module.os, "fsync", no_space_for_shards)
    with pytest.raises(UserError, match="disk full while writing block 0"):
        capture_store(teachers, prompts[:4], out, **SETTINGS, block_size=BLOCK, show_progress=False)
    assert list((out / SHARDS_DIR).iterdir()) == []


def test_fingerprint_mismatch_names_the_field(captured, tiny_world):
    store = open_store(captured)
    configured = local_fingerprint(tiny_world.teachers["qwen"], "qwen")
    stored = store.manifest["teachers"]["qwen"]["fingerprint"]
    assert configured == stored
    with pytest.raises(UserError) as error:
        store_teachers(store, {"qwen": {**configured, "tokenizer": "def0123456789abcdef"}})
    assert str(error.value) == (
        f"store teacher 'qwen': tokenizer hash differs from the configured teacher's "
        f"(store {stored['tokenizer'][:12]}.., config def012345678..)"
    )
    with pytest.raises(UserError, match="weights hash differs"):
        store_teachers(store, {"qwen": {**configured, "weights": "0" * 64}})
    with pytest.raises(
        UserError, match="no teacher named 'llama' \\(it holds: gemma, gptoss, qwen\\)"
    ):
        store_teachers(store, {"llama": configured})


def test_store_teachers_refuse_what_was_not_captured(captured, prompts):
    store = open_store(captured)
    (qwen,) = [
        t
        for t in store_teachers(store, {"qwen": store.manifest["teachers"]["qwen"]["fingerprint"]})
    ]
    for change, message in [
        ({"seed": 4}, "asked for seed 4, but the store was captured with 3"),
        ({"samples": 1}, "asked for samples 1"),
        ({"max_new_tokens": 9}, "asked for max_new_tokens 9"),
    ]:
        asked = {k: SETTINGS[k] for k in ("samples", "max_new_tokens", "seed")} | change
        with pytest.raises(UserError, match=message):
            qwen.complete(prompts, **asked)
    with pytest.raises(UserError, match="the prompts differ from the captured ones"):
        qwen.complete(prompts[:-1], samples=2, max_new_tokens=6, seed=3)
    answer = store.candidates[0].text
    with pytest.raises(UserError, match="asked for top_k 17, but the store holds the top 16"):
        qwen.score(prompts[:1], [answer], top_k=17, temperature=1.0)
    with pytest.raises(UserError, match=r"asked for temperature 2\.0"):
        qwen.score(prompts[:1], [answer], top_k=8, temperature=2.0)
    with pytest.raises(UserError, match=r"no reading of prompt .* with answer 'no such answ\.\.'"):
        qwen.score(prompts[:1], ["no such answer here"], top_k=8, temperature=1.0)
    assert qwen.score(prompts[:1], [answer], top_k=8, temperature=1.0)[0].top_ids.shape[1] == 8


def test_a_greedy_store_serves_every_seed(tmp_path, teachers, prompts):
    """With one answer per prompt (greedy) the seed draws nothing: a store captured at one seed
    answers a run of any seed, as the live teacher does; with sampled answers it is checked."""
    greedy = {**SETTINGS, "samples": 1}
    out = tmp_path / "greedy"
    assert capture_store(teachers[2:], prompts[:5], out, **greedy, block_size=BLOCK,
                         show_progress=False)  # fmt: skip
    assert capture_store(teachers[2:], prompts[:5], tmp_path / "sampled", **SETTINGS,
                         block_size=BLOCK, show_progress=False)  # fmt: skip
    store = open_store(out)
    (qwen,) = store_teachers(store, {"qwen": store.manifest["teachers"]["qwen"]["fingerprint"]})
    live = teachers[2].complete(prompts[:5], samples=1, max_new_tokens=6, seed=11)
    for seed in (3, 11):
        assert qwen.complete(prompts[:5], samples=1, max_new_tokens=6, seed=seed) == live
        # the run's block-at-a-time reading of the store serves every seed too
        (read,) = [r for _, r in block_readings([qwen], prompts[:5], **{**greedy, "seed": seed})]
        assert [c.text for c in read.candidates] == live[0]
    assert live != [[""] * 5]  # the teacher answers something: the comparison can fail
    sampled = open_store(tmp_path / "sampled")  # a store of sampled answers checks the seed
    sampled_teachers = store_teachers(
        sampled, {"qwen": sampled.manifest["teachers"]["qwen"]["fingerprint"]}
    )
    for read in (
        lambda: sampled_teachers[0].complete(prompts[:5], samples=2, max_new_tokens=6, seed=4),
        lambda: list(block_readings(sampled_teachers, prompts[:5], **{**SETTINGS, "seed": 4})),
    ):
        with pytest.raises(UserError, match="asked for seed 4, but the store was captured with 3"):
            read()


@pytest.mark.slow
def test_capture_command_with_shards_then_merge_then_a_run_from_the_store(
    tmp_path, tiny_cache, tiny_world, monkeypatch, capsys
):
    """The README's three store commands: `capture --shard i/n`, `capture --merge`, and
    `run ... student.store=STORE`, which trains the student without loading a teacher to read."""
    import polydistill.student.readings as student_module
    from polydistill.cli import main

    tiny = TINY
    config = [
        str(tiny),
        f"world.cache_dir={tiny_cache}",
        "threads=1",
        "student.teachers=[gemma, gptoss, qwen]",
        "student.top_k=8",
        "student.prompts_per_tag=4",
        "eval.max_new_tokens=4",
    ]

    def invoke(*args: str) -> int:
        monkeypatch.setattr(sys, "argv", ["polydistill", *args])
        try:
            main()
        except SystemExit as exit:
            return int(exit.code)
        return 0

    out = tmp_path / "store"
    for shard in ("0/2", "1/2"):
        assert (
            invoke("capture", *config, "--out", str(out), "--shard", shard, "--block-size", "8")
            == 0
        )
    assert invoke("capture", "--merge", "--out", str(out)) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["top_k"] == 8 and list(manifest["teachers"]) == list(NAMES)
    assert invoke("capture", str(tiny), "--out", str(out), "--shard", "2/2") == 2
    assert "--shard '2/2': expected i/n" in capsys.readouterr().err

    def no_live_teacher(*args, **kwargs):
        raise AssertionError("a teacher was loaded to read the student's prompts")

    monkeypatch.setattr(student_module, "teacher_from_config", no_live_teacher)
    run = tmp_path / "run"
    small = ["student.model={hidden_size: 64, layers: 1, heads: 1, kv_heads: 1, head_dim: 64, "
             "intermediate_size: 64}", "student.train={steps: 2, batch_size: 4, warmup_steps: 1}",
             "eval.heldout_limit=2"]  # fmt: skip
    assert invoke("run", *config, "--out", str(run), f"student.store={out}", *small) == 0
    assert "student" in json.loads((run / "metrics.json").read_text())["models"]
    lineage = json.loads((run / "student" / "lineage.json").read_text())
    assert [t["name"] for t in lineage["teachers"]] == list(NAMES)


def test_benchmark_kl_matches_a_dense_float64_reconstruction():
    from benchmarks.store import kl_to_reconstruction

    rng = np.random.default_rng(5)
    vocab, k = 50, 8
    logits = rng.standard_normal((6, vocab)) * 2.0
    full = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    ids = np.argsort(-full, axis=1)[:, :k]
    top = np.take_along_axis(full, ids, axis=1)
    q = np.full((6, vocab), 0.0)
    for row in range(6):
        rest = 1 - np.exp(top[row]).sum()
        q[row] = rest / (vocab - k)
        q[row, ids[row]] = np.exp(top[row])
    want = (np.exp(full) * (full - np.log(q))).sum(1)
    np.testing.assert_allclose(kl_to_reconstruction(full, ids, top), want, rtol=1e-6)
    everything = np.argsort(-full, axis=1)
    exact = np.take_along_axis(full, everything, axis=1)
    assert np.abs(kl_to_reconstruction(full, everything, exact)).max() < 1e-5


def test_a_store_keys_every_row_by_the_whole_prompt(tmp_path, teachers, prompts):
    """Conversations that end in the same user turn (one with a system turn, one with earlier
    turns), that turn alone and the same words as text are four prompts: the store gives back
    each one's own rows, and refuses a prompt it did not capture."""
    last = prompts[0]
    asked = [
        (Turn("system", "Answer briefly."), Turn("user", last)),
        (Turn("user", prompts[1]), Turn("assistant", "ok"), Turn("user", last)),
        last,
        PlainText(last),
    ]
    qwen = teachers[2]
    settings = {**SETTINGS, "samples": 1}
    out = tmp_path / "store"
    assert capture_store([qwen], asked, out, **settings, block_size=BLOCK, show_progress=False)
    store = open_store(out)
    (stored,) = store_teachers(store, {"qwen": qwen.fingerprint()})
    live = gather_readings([qwen], asked, **{**settings, "seed": block_seed(3, 0)})
    read = gather_readings([stored], asked, **settings)
    assert [(c.prompt, c.text) for c in read.candidates] == [
        (c.prompt, c.text) for c in live.candidates
    ]
    starts = set()
    for want, got in zip(live.rows["qwen"], read.rows["qwen"], strict=True):
        np.testing.assert_array_equal(got.ids, want.ids)
        starts.add(tuple(got.ids[: got.start]))
    assert len(starts) == len(asked)  # four renderings: not one prompt read four times
    with pytest.raises(UserError, match="the prompts differ from the captured ones"):
        other = [*asked[:3], (Turn("system", "Other."), Turn("user", last))]
        stored.complete(other, samples=1, max_new_tokens=6, seed=3)
    with pytest.raises(UserError, match="no reading of prompt"):
        stored.score([other[-1]], [read.candidates[0].text], top_k=8, temperature=1.0)
