"""The training loop: accumulation, schedule, precision, determinism, checkpoints and resume.

A two-layer Qwen3 with attention dropout (so that a lost RNG state would show in the weights)
trains on short "reverse"/"add" examples whose completions differ in length.
"""

import itertools
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from polydistill.chat import batch_rows, shuffled_stream, supervised_batches
from polydistill.errors import UserError
from polydistill.student.export import export_student
from polydistill.train import LossOutput, accumulate_gradients, cosine_lr, sft_loss, train
from polydistill.train.checkpoint import list_checkpoints
from polydistill.train.selection import read_selection
from polydistill.world.tokenizers import train_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: one thread is fastest

WORDS = ["ab", "cab", "dcab", "bdcae", "eabdcb", "ccabded", "abcdedcba"]
PROMPTS = [f"reverse {w}" for w in WORDS] + [f"add {a} {b}" for a in (3, 14, 159) for b in (2, 71)]
ANSWERS = [w[::-1] for w in WORDS] + [str(a + b) for a in (3, 14, 159) for b in (2, 71)]
LOOP = {"steps": 6, "lr": 3e-3, "warmup_steps": 2, "accumulation_steps": 2, "weight_decay": 0.01}


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [f"{p} {a}" for p, a in zip(PROMPTS, ANSWERS, strict=True)] * 20
    return train_tokenizer("qwen", [*corpus, *(["user assistant"] * 20)], 400)


@pytest.fixture(scope="module")
def batch_at(tokenizer):
    return supervised_batches(tokenizer, PROMPTS, ANSWERS, 3, 7, "test data")


def tiny_model(tokenizer, dropout: float = 0.1):
    config = AutoConfig.for_model(
        "qwen3",
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
        attention_dropout=dropout,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bit_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ in {different[:3]}"


def log_records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "train_log.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in records]


def run(tokenizer, batch_at, run_dir=None, **options):
    model = tiny_model(tokenizer)
    settings = {**LOOP, "run_dir": run_dir, **options}
    if run_dir is not None:
        settings.setdefault("checkpoint_every", 2)
    records = train(model, batch_at, sft_loss, **settings)
    return model, records


@pytest.fixture(scope="module")
def uninterrupted(tokenizer, batch_at, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    model, records = run(tokenizer, batch_at, run_dir, fingerprint={"data": "words"})
    return weights(model), records, run_dir


def stop_at(step: int):
    def hook(current: int, record: dict) -> None:
        if current == step:
            raise KeyboardInterrupt("killed")

    return hook


# --- schedule and accumulation ------------------------------------------------------------


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    steps, lr, warmup, floor = 50, 1e-3, 10, 0.1
    rates = [cosine_lr(s, steps, lr, warmup, floor) for s in range(steps)]
    assert rates[:warmup] == pytest.approx([lr * (s + 1) / warmup for s in range(warmup)])
    decay = rates[warmup:]
    assert decay[0] == pytest.approx(lr)
    assert decay[-1] == pytest.approx(floor * lr)
    assert all(a >= b for a, b in itertools.pairwise(decay))
    # halfway through the decay the cosine is at zero: the mean of peak and floor
    middle = warmup + (steps - 1 - warmup) / 2
    assert cosine_lr(int(middle), steps, lr, warmup, floor) > lr * (1 + floor) / 2
    assert cosine_lr(int(middle) + 1, steps, lr, warmup, floor) < lr * (1 + floor) / 2


def test_logged_learning_rates_follow_the_schedule(tokenizer, batch_at):
    _, records = run(tokenizer, batch_at)
    expected = [cosine_lr(s, 6, 3e-3, 2, 0.1) for s in range(6)]
    assert [r["lr"] for r in records] == pytest.approx(expected)


def quarters(batch: dict) -> list[dict]:
    rows = batch["input_ids"].shape[0]
    return [{k: v[i : i + 2] for k, v in batch.items()} for i in range(0, rows, 2)]


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_accumulating_four_quarters_equals_one_batch(tokenizer, dtype, tolerance):
    whole = supervised_batches(tokenizer, PROMPTS, ANSWERS, 8, 3, "test data")(0)
    parts = quarters(whole)
    counts = [int((p["labels"] != -100).sum()) for p in parts]
    assert len(set(counts)) > 1, "the test needs micro-batches with unequal token counts"

    model = tiny_model(tokenizer, dropout=0.0).to(dtype)
    one = accumulate_gradients(model, sft_loss, [whole])
    one_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    four = accumulate_gradients(model, sft_loss, parts)

    assert four.loss_tokens == one.loss_tokens == sum(counts)
    assert four.loss == pytest.approx(one.loss, rel=tolerance)
    assert four.parts["ce"] == pytest.approx(one.parts["ce"], rel=tolerance)
    for name, p in model.named_parameters():
        scale = one_grads[name].abs().max().item()
        torch.testing.assert_close(p.grad, one_grads[name], rtol=tolerance, atol=tolerance * scale)
    # the mean of the micro-batch means has another gradient: normalisation must be global
    model.zero_grad(set_to_none=True)
    for part, count in zip(parts, counts, strict=True):
        (sft_loss(model, part).loss_sum / (count * len(parts))).backward()
    embedding = model.get_input_embeddings().weight
    off = (embedding.grad - one_grads["model.embed_tokens.weight"]).abs().max()
    assert off > 1e3 * tolerance * one_grads["model.embed_tokens.weight"].abs().max()


def test_accumulation_in_the_loop_reads_consecutive_micro_batches(tokenizer):
    whole_at = supervised_batches(tokenizer, PROMPTS, ANSWERS, 8, 3, "test data")

    def quarter_at(i: int) -> dict:
        return quarters(whole_at(i // 4))[i % 4]

    common = {"steps": 3, "lr": 1e-3, "grad_clip": None}
    one = train(tiny_model(tokenizer, 0.0), whole_at, sft_loss, **common)
    four = train(tiny_model(tokenizer, 0.0), quarter_at, sft_loss, accumulation_steps=4, **common)
    for a, b in zip(one, four, strict=True):
        assert (a["loss_tokens"], a["step"]) == (b["loss_tokens"], b["step"])
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)


def test_a_step_without_loss_tokens_is_an_error(tokenizer, batch_at):
    def masked(i: int) -> dict:
        batch = dict(batch_at(i))
        batch["labels"] = torch.full_like(batch["labels"], -100)
        return batch

    with pytest.raises(UserError, match="no loss tokens"):
        train(tiny_model(tokenizer), masked, sft_loss, steps=1, lr=1e-3)


# --- determinism, precision, gradient checkpointing --------------------------------------------


def test_same_seed_gives_bit_identical_weights_and_another_seed_does_not(
    tokenizer, batch_at, uninterrupted
):
    reference, records, _ = uninterrupted
    model, again = run(tokenizer, batch_at)
    assert_bit_identical(weights(model), reference)
    assert without_timing(again) == without_timing(records)
    other, _ = run(tokenizer, batch_at, seed=1)  # only the dropout masks change
    assert not torch.equal(weights(other)["model.norm.weight"], reference["model.norm.weight"])


def test_bfloat16_autocasts_the_forward_and_keeps_float32_master_weights(tokenizer, batch_at):
    seen = []

    def checking_loss(model, batch) -> LossOutput:
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"))
        return sft_loss(model, batch)

    model = tiny_model(tokenizer)
    records = train(model, batch_at, checking_loss, precision="bfloat16", **LOOP)
    _, float32 = run(tokenizer, batch_at)
    assert seen and all(dtype == torch.bfloat16 for dtype in seen)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert records[0]["loss"] == pytest.approx(float32[0]["loss"], rel=2e-2)
    assert records[-1]["loss"] < records[0]["loss"]


def test_gradient_checkpointing_changes_memory_not_results(tokenizer, batch_at, uninterrupted):
    reference, _, _ = uninterrupted
    active = []

    def checking_loss(model, batch) -> LossOutput:
        active.append(model.is_activation_checkpointing)
        return sft_loss(model, batch)

    model = tiny_model(tokenizer)
    train(model, batch_at, checking_loss, gradient_checkpointing=True, **LOOP)
    assert active and all(active)
    assert not model.is_activation_checkpointing
    for name, tensor in weights(model).items():
        torch.testing.assert_close(tensor, reference[name], rtol=1e-6, atol=1e-7)


# --- checkpoints and resume -----------------------------------------------------------------


def test_checkpoints_keep_the_newest_and_hold_everything_to_resume(uninterrupted):
    _, records, run_dir = uninterrupted
    kept = list_checkpoints(run_dir / "checkpoints")
    assert [p.name for p in kept] == ["step-00000004", "step-00000006"]
    files = {p.name for p in kept[-1].iterdir()}
    assert {"model.safetensors", "config.json", "optimizer.pt", "rng.pt"} <= files
    state = json.loads((kept[-1] / "trainer_state.json").read_text())
    assert (state["step"], state["next_micro_batch"], state["finished"]) == (6, 12, True)
    assert without_timing(log_records(run_dir)) == without_timing(records)
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(("killed_at", "resumes_at"), [(1, 1), (3, 3), (5, 5)])
def test_a_run_killed_after_any_step_resumes_to_the_same_weights(
    tokenizer, batch_at, uninterrupted, tmp_path, killed_at, resumes_at
):
    reference, records, _ = uninterrupted
    fingerprint = {"data": "words"}
    with pytest.raises(KeyboardInterrupt):
        run(tokenizer, batch_at, tmp_path, fingerprint=fingerprint, on_step=stop_at(killed_at))
    assert len(log_records(tmp_path)) == killed_at  # steps past the checkpoint are logged...
    model, resumed = run(tokenizer, batch_at, tmp_path, fingerprint=fingerprint, resume=True)
    assert_bit_identical(weights(model), reference)
    assert resumed[0]["step"] == resumes_at  # ...and redone: the kill hit before their checkpoint
    assert without_timing(log_records(tmp_path)) == without_timing(records)


def test_a_run_killed_while_writing_a_checkpoint_resumes_from_the_previous_one(
    tokenizer, batch_at, uninterrupted, tmp_path, monkeypatch
):
    reference, _, _ = uninterrupted
    real_rename = os.rename

    def dying_rename(source, target):
        if Path(target).name == "step-00000004":
            raise KeyboardInterrupt("killed during the rename")
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", dying_rename)
    with pytest.raises(KeyboardInterrupt):
        run(tokenizer, batch_at, tmp_path, fingerprint={"data": "words"})
    monkeypatch.setattr(os, "rename", real_rename)
    checkpoints = tmp_path / "checkpoints"
    assert [p.name for p in list_checkpoints(checkpoints)] == ["step-00000002"]
    # a SIGKILL would have left the half-written folder behind
    (checkpoints / ".tmp-step-00000004-x").mkdir()
    (checkpoints / ".tmp-step-00000004-x" / "model.safetensors").write_bytes(b"torn")
    model, _ = run(tokenizer, batch_at, tmp_path, fingerprint={"data": "words"}, resume=True)
    assert_bit_identical(weights(model), reference)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000004", "step-00000006"]


def test_resuming_a_finished_run_loads_its_weights_and_trains_no_more(
    tokenizer, batch_at, uninterrupted
):
    reference, _, run_dir = uninterrupted
    model, records = run(tokenizer, batch_at, run_dir, fingerprint={"data": "words"}, resume=True)
    assert records == []
    assert_bit_identical(weights(model), reference)


def test_a_run_stopped_by_its_hook_is_finished_for_resume(tokenizer, batch_at, tmp_path):
    model, records = run(tokenizer, batch_at, tmp_path, on_step=lambda step, _: step == 3)
    assert [r["step"] for r in records] == [1, 2, 3]
    stopped = weights(model)
    state = json.loads((tmp_path / "checkpoints/step-00000003/trainer_state.json").read_text())
    assert state["finished"]
    model, records = run(tokenizer, batch_at, tmp_path, resume=True)
    assert records == []
    assert_bit_identical(weights(model), stopped)
    with pytest.raises(UserError, match="resume needs"):
        run(tokenizer, batch_at, tmp_path, resume=True, checkpoint_every=0)


def test_resume_refuses_a_checkpoint_of_another_config(tokenizer, batch_at, uninterrupted):
    _, _, run_dir = uninterrupted
    with pytest.raises(UserError, match=r"run\.data: checkpoint 'words', now 'numbers'"):
        run(tokenizer, batch_at, run_dir, fingerprint={"data": "numbers"}, resume=True)
    with pytest.raises(UserError, match=r"loop\.lr: checkpoint 0\.003, now 0\.001"):
        run(tokenizer, batch_at, run_dir, fingerprint={"data": "words"}, resume=True, lr=1e-3)


def test_a_fresh_run_never_overwrites_existing_checkpoints(tokenizer, batch_at, uninterrupted):
    _, _, run_dir = uninterrupted
    before = {p: p.read_bytes() for p in run_dir.glob("checkpoints/*/*") if p.is_file()}
    with pytest.raises(UserError, match="already holds checkpoints"):
        run(tokenizer, batch_at, run_dir, fingerprint={"data": "words"})
    after = {p: p.read_bytes() for p in run_dir.glob("checkpoints/*/*") if p.is_file()}
    assert after == before


# --- weight averaging ------------------------------------------------------------------------


def test_the_trained_model_is_the_moving_average_of_the_weights_after_each_step(
    tokenizer, batch_at
):
    initial = {n: p.detach().double().clone() for n, p in tiny_model(tokenizer).named_parameters()}
    seen = []
    model = tiny_model(tokenizer)  # built here, not by `run`, so that the hook can read it
    train(
        model,
        batch_at,
        sft_loss,
        **LOOP,
        ema_decay=0.6,
        on_step=lambda step, _: seen.append(
            {n: p.detach().double().clone() for n, p in model.named_parameters()}
        ),
    )
    reference = initial
    for step, raw in enumerate(seen, start=1):
        rate = min(0.6, (1 + step) / (10 + step))
        reference = {n: rate * reference[n] + (1 - rate) * raw[n] for n in raw}
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach().double(), reference[name], rtol=0, atol=1e-6)
    assert not torch.allclose(model.model.norm.weight.double(), seen[-1]["model.norm.weight"])


def test_an_averaged_run_killed_midway_resumes_to_the_same_average(tokenizer, batch_at, tmp_path):
    reference, _ = run(tokenizer, batch_at, tmp_path / "whole", ema_decay=0.5)
    with pytest.raises(KeyboardInterrupt):
        run(tokenizer, batch_at, tmp_path / "killed", ema_decay=0.5, on_step=stop_at(5))
    assert (tmp_path / "killed/checkpoints/step-00000004/average.safetensors").is_file()
    resumed, records = run(tokenizer, batch_at, tmp_path / "killed", ema_decay=0.5, resume=True)
    assert [r["step"] for r in records] == [5, 6]
    assert_bit_identical(weights(resumed), weights(reference))
    with pytest.raises(UserError, match="ema_decay must be in"):
        run(tokenizer, batch_at, ema_decay=1.0)
    (tmp_path / "killed/checkpoints/step-00000006/average.safetensors").unlink()
    state = tmp_path / "killed/checkpoints/step-00000006/trainer_state.json"
    state.write_text(state.read_text().replace('"finished": true', '"finished": false'))
    with pytest.raises(UserError, match=r"has no average\.safetensors"):
        run(tokenizer, batch_at, tmp_path / "killed", ema_decay=0.5, resume=True)


def test_metrics_reach_tensorboard_when_it_is_installed(tokenizer, batch_at, tmp_path, monkeypatch):
    scalars = []

    class FakeWriter:
        def __init__(self, log_dir, purge_step=None):
            self.log_dir = log_dir

        def add_scalar(self, tag, value, step):
            scalars.append((tag, step))

        def close(self):
            scalars.append(("closed", self.log_dir))

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    run(tokenizer, batch_at, tmp_path, steps=2, checkpoint_every=0)
    for tag in ("train/loss", "train/ce", "train/lr", "train/grad_norm", "train/tokens_per_s"):
        assert [step for t, step in scalars if t == tag] == [1, 2]
    assert scalars[-1] == ("closed", str(tmp_path / "tensorboard"))


# --- the final model -----------------------------------------------------------------------

LOAD_IN_FRESH_PROCESS = """
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
messages = [{"role": "user", "content": "reverse cab"}]
ids = tokenizer.apply_chat_template(
    messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
)
with torch.no_grad():
    torch.save(model(**ids).logits, sys.argv[2])
"""


def save_final(model, tokenizer, out):
    """The trained model as the run writes it (`student.export`)."""
    return export_student(
        model,
        tokenizer,
        out,
        chat_template=tokenizer.chat_template,
        end_of_turn=tokenizer.eos_token,
    )


@pytest.mark.slow
def test_the_final_model_loads_in_a_fresh_process(tokenizer, batch_at, uninterrupted, tmp_path):
    reference, _, _ = uninterrupted
    model = tiny_model(tokenizer)
    model.load_state_dict(reference)
    model.eval()
    out = save_final(model, tokenizer, tmp_path / "student")
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= names
    assert not any(n.endswith(".bin") or n.startswith(".") for n in names)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    logits_file = tmp_path / "logits.pt"
    subprocess.run(
        [sys.executable, "-c", LOAD_IN_FRESH_PROCESS, str(out), str(logits_file)],
        check=True,
        env=env,
        timeout=120,
    )
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "reverse cab"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        expected = model(**ids).logits
    torch.testing.assert_close(torch.load(logits_file), expected, rtol=1e-5, atol=1e-5)


def test_a_failing_final_save_leaves_the_previous_model_untouched(tokenizer, tmp_path):
    model = tiny_model(tokenizer)
    out = save_final(model, tokenizer, tmp_path / "student")
    before = (out / "model.safetensors").read_bytes()

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    model.save_pretrained = broken_save
    with pytest.raises(OSError, match="disk full"):
        save_final(model, tokenizer, out)
    assert (out / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]


# --- resumable data ------------------------------------------------------------------------


def test_the_shuffled_stream_is_a_sequence_of_permutations_with_random_access():
    import random

    rows, seed = 7, 11
    rng, expected = random.Random(seed), []
    for _ in range(4):  # the order the former iterator produced
        epoch = list(range(rows))
        rng.shuffle(epoch)
        expected += epoch
    row_at = shuffled_stream(rows, seed)
    assert [row_at(i) for i in range(4 * rows)] == expected
    assert [row_at(i) for i in (25, 3, 17, 3)] == [expected[i] for i in (25, 3, 17, 3)]


def test_length_buckets_cut_each_batch_by_length_and_pad_less():
    """A batch's buckets hold exactly its rows, sorted by length (so an accumulated step has
    the plain batch's gradient), are a pure function of their index, and pad less."""
    import random

    rng = random.Random(5)
    lengths = [rng.randint(3, 40) for _ in range(101)]
    plain, bucketed = batch_rows(lengths, 8, 3), batch_rows(lengths, 8, 3, buckets=3)
    row_at = shuffled_stream(len(lengths), 3)
    assert [plain(i) for i in range(3)] == [[row_at(8 * i + j) for j in range(8)] for i in range(3)]
    padded = {"plain": 0, "bucketed": 0}

    def padding(rows):
        return len(rows) * max(lengths[r] for r in rows) - sum(lengths[r] for r in rows)

    for batch in range(30):  # across epochs of 101 rows
        pieces = [bucketed(3 * batch + k) for k in range(3)]
        assert [len(p) for p in pieces] == [3, 2, 3]
        assert sorted(r for p in pieces for r in p) == sorted(plain(batch))
        joined = [lengths[r] for p in pieces for r in p]
        assert joined == sorted(joined)
        padded["plain"] += padding(plain(batch))
        padded["bucketed"] += sum(padding(p) for p in pieces)
    assert padded["bucketed"] < padded["plain"] / 2
    again = batch_rows(lengths, 8, 3, buckets=3)
    assert [bucketed(i) for i in (13, 2, 13, 0)] == [again(i) for i in (13, 2, 13, 0)]
    with pytest.raises(ValueError, match="buckets must be >= 1, got 0"):
        batch_rows(lengths, 8, 3, buckets=0)
    with pytest.raises(ValueError, match="9 length buckets cannot split a batch of 8 rows"):
        batch_rows(lengths, 8, 3, buckets=9)


def test_a_curriculum_draws_its_first_batches_from_its_rows_then_from_all():
    """The first batches cover the first rows evenly (shuffled epochs of them), the rest are
    the plain stream from its start; both are pure functions of the index, buckets included."""
    lengths = [3 + r % 7 for r in range(50)]
    first = list(range(0, 50, 5))
    rows_of = batch_rows(lengths, 4, 1, first_rows=first, first_batches=5)
    plain = batch_rows(lengths, 4, 1)
    early = [r for i in range(5) for r in rows_of(i)]
    assert sorted(early) == sorted(first * 2)
    assert [rows_of(5 + i) for i in range(20)] == [plain(i) for i in range(20)]
    bucketed = batch_rows(lengths, 4, 1, buckets=2, first_rows=first, first_batches=5)
    assert [sorted(bucketed(2 * i) + bucketed(2 * i + 1)) for i in (7, 0, 3)] == [
        sorted(rows_of(i)) for i in (7, 0, 3)
    ]
    with pytest.raises(ValueError, match="5 first batches need rows to draw from"):
        batch_rows(lengths, 4, 1, first_batches=5)


def test_supervised_batches_are_a_function_of_their_index(batch_at):
    later, first, later_again = batch_at(9), batch_at(0), batch_at(9)
    for key in later:
        assert torch.equal(later[key], later_again[key])
    labelled = (first["labels"] != -100) & (first["attention_mask"] == 0)
    assert not labelled.any()


# --- choosing the weights by a score (train.selection) -------------------------------------


def distance_from_start(tokenizer):
    """A score of the weights alone (so that a resumed run scores as the killed one would):
    minus their distance from the initial weights, which favours the early steps."""
    start = weights(tiny_model(tokenizer))

    def score(model) -> float:
        return -sum(float((p - start[n]).norm()) for n, p in weights(model).items())

    return score


def test_the_run_returns_the_averaged_weights_its_score_liked_best(tokenizer, batch_at):
    scores, scored = iter([0.2, 0.7, 0.4]), []

    def select_by(model) -> float:
        scored.append(weights(model))
        return next(scores)

    model = tiny_model(tokenizer)
    records = train(
        model, batch_at, sft_loss, **LOOP, ema_decay=0.5, select_every=2, select_by=select_by
    )
    plain, plain_records = run(tokenizer, batch_at, ema_decay=0.5)
    assert [r.get("validation") for r in records] == [None, 0.2, None, 0.7, None, 0.4]
    unscored = [{k: v for k, v in r.items() if k != "validation"} for r in records]
    assert without_timing(unscored) == without_timing(plain_records)  # training is unchanged
    assert_bit_identical(scored[2], weights(plain))  # what is scored is what the run would return
    assert_bit_identical(weights(model), scored[1])
    assert not torch.equal(scored[1]["model.norm.weight"], scored[2]["model.norm.weight"])


def test_a_selecting_run_killed_midway_resumes_to_the_same_choice(tokenizer, batch_at, tmp_path):
    options = {"ema_decay": 0.5, "select_every": 3, "select_by": distance_from_start(tokenizer)}
    reference, _ = run(tokenizer, batch_at, tmp_path / "whole", **options)
    state = json.loads(
        (tmp_path / "whole/checkpoints/step-00000006/trainer_state.json").read_text()
    )
    assert state["selection"]["step"] == 3
    assert [p["step"] for p in state["selection"]["history"]] == [3, 6]
    with pytest.raises(KeyboardInterrupt):
        run(tokenizer, batch_at, tmp_path / "killed", **options, on_step=stop_at(5))
    assert (tmp_path / "killed/checkpoints/step-00000004/selected.safetensors").is_file()
    before_scoring = (tmp_path / "killed/checkpoints/step-00000002/trainer_state.json").read_text()
    strict = json.loads(before_scoring, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert strict["selection"] == {"step": 0, "score": None, "history": []}
    resumed, records = run(tokenizer, batch_at, tmp_path / "killed", **options, resume=True)
    assert [r["step"] for r in records] == [5, 6]
    assert_bit_identical(weights(resumed), weights(reference))
    finished = tmp_path / "killed/checkpoints/step-00000006"
    assert (
        json.loads((finished / "trainer_state.json").read_text())["selection"] == state["selection"]
    )


def test_a_finished_selecting_run_records_its_choice_without_checkpoints(
    tokenizer, batch_at, tmp_path
):
    options = {"select_every": 2, "select_by": distance_from_start(tokenizer)}
    run(tokenizer, batch_at, tmp_path, checkpoint_every=0, **options)
    choice = read_selection(tmp_path)
    assert not (tmp_path / "checkpoints").exists()
    assert choice["step"] == 2 and [p["step"] for p in choice["history"]] == [2, 4, 6]
    assert choice["score"] == max(p["score"] for p in choice["history"])
    with pytest.raises(KeyboardInterrupt):  # a run killed in the same folder leaves no stale one
        run(tokenizer, batch_at, tmp_path, checkpoint_every=0, **options, on_step=stop_at(3))
    assert read_selection(tmp_path) is None


def test_selection_settings_and_scores_are_checked(tokenizer, batch_at, tmp_path):
    with pytest.raises(UserError, match=r"select_every \(2\) must be ≥ 1 with select_by"):
        run(tokenizer, batch_at, select_every=2)
    with pytest.raises(UserError, match=r"select_every \(0\) must be ≥ 1 with select_by"):
        run(tokenizer, batch_at, select_by=lambda model: 1.0)
    with pytest.raises(UserError, match="step 3: the selection score is nan"):
        run(tokenizer, batch_at, select_every=3, select_by=lambda model: float("nan"))
    options = {"select_every": 3, "select_by": distance_from_start(tokenizer)}
    with pytest.raises(KeyboardInterrupt):
        run(tokenizer, batch_at, tmp_path, **options, on_step=stop_at(5))
    (tmp_path / "checkpoints/step-00000004/selected.safetensors").unlink()
    with pytest.raises(UserError, match=r"has scores but no selected\.safetensors"):
        run(tokenizer, batch_at, tmp_path, **options, resume=True)
    with pytest.raises(UserError, match="select_every: checkpoint 3, now 2"):
        run(tokenizer, batch_at, tmp_path, **{**options, "select_every": 2}, resume=True)
