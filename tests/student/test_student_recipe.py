"""The multi-teacher student path: teacher readings, projected and fused rows, loss, and `run`.

The world is the tiny one's settings with two teachers of its own (its own cache key):
`tutor` speaks the student's tokenizer, so its rows can be checked against dense float64
recomputations directly; `counter` speaks the gpt-oss-style tokenizer (digits in groups of up to
three, where the student has single digits), so its rows reach the student through the
cross-tokenizer projection, checked against the chain rule on its dense distribution.
"""

import copy
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from polydistill.chat import encode_prompts, pad_right, render_answer
from polydistill.config import BenchmarkConfig, load_config
from polydistill.data import DataSummary
from polydistill.errors import UserError
from polydistill.losses import divergence, reference_distill_loss
from polydistill.student import workers
from polydistill.student.batches import distillation_batches, plan_batches
from polydistill.student.loss import (
    IGNORE,
    distillation_loss,
    final_hidden_states,
    fused_head_weight,
)
from polydistill.student.plans import ModelPlan, model_plans, plan_data, validation_references
from polydistill.student.prompts import Prompts, as_prompts, prompt_sets
from polydistill.student.readings import student_teachers, teacher_readings
from polydistill.student.targets import student_targets
from polydistill.targets import SparseTargets
from polydistill.teachers.local import LocalTeacher, local_teacher
from polydistill.teachers.readings import Candidate, Readings, readings_without
from polydistill.train import sft_loss, train
from polydistill.world.architectures import build_model
from polydistill.world.build import build_world
from polydistill.world.domains import Example
from polydistill.world.inputs import WorldPrompts, world_inputs, world_student
from polydistill.world.prompts import example_record

pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: one thread is fastest

TINY = Path(__file__).parents[1] / "tiny.yaml"


def world_sets(cfg, world):
    """The run's prompt sets from the world's examples, as `polydistill run` reads them."""
    return prompt_sets(cfg, WorldPrompts(world).records({}, DataSummary()))


SMALL = {"hidden_size": 64, "layers": 1, "heads": 1, "kv_heads": 1, "head_dim": 64}


def world_teacher(name: str, tokenizer: str, domain: str) -> dict:
    return {
        "name": name,
        "family": "qwen",
        "tokenizer": tokenizer,
        "domains": [domain],
        "model": {**SMALL, "intermediate_size": 128},
        "train": {"steps": 20, "batch_size": 8, "lr": 5.0e-3, "warmup_steps": 2},
    }


TUTOR = world_teacher("tutor", "student", "facts")
COUNTER = world_teacher("counter", "gpt-oss", "arithmetic")
STUDENT = {
    "teachers": ["tutor", "counter"],
    "model": {**SMALL, "intermediate_size": 64},
    "train": {"steps": 4, "batch_size": 8, "lr": 3.0e-3, "warmup_steps": 1},
    "prompts_per_tag": 16,
    "top_k": 8,
    "checkpoint_every": 2,
}


@pytest.fixture(scope="module")
def config_file(tmp_path_factory, tiny_cache) -> Path:
    raw = yaml.safe_load(TINY.read_text())
    raw["world"]["cache_dir"] = str(tiny_cache)
    raw["threads"] = 1  # the world's teachers train on one thread each, like these tests
    raw["teachers"] = [TUTOR, COUNTER]
    raw["student"] = STUDENT
    path = tmp_path_factory.mktemp("distill") / "two.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def cfg(config_file):
    return load_config(config_file)


@pytest.fixture(scope="module")
def world(cfg):
    return build_world(cfg)


@pytest.fixture(scope="module")
def teachers(cfg, world) -> list[LocalTeacher]:
    return student_teachers(cfg, world.teachers)


@pytest.fixture(scope="module")
def tutor(world) -> LocalTeacher:
    return local_teacher("tutor", world.teachers["tutor"], batch_size=2)


@pytest.fixture(scope="module")
def tokenizer(cfg, world):
    return world_student(cfg, world).tokenizer()


@pytest.fixture(scope="module")
def prompts(cfg, world) -> Prompts:
    return world_sets(cfg, world).train


@pytest.fixture(scope="module")
def readings(cfg, teachers, prompts):
    return teacher_readings(cfg, teachers, prompts)


@pytest.fixture(scope="module")
def data(cfg, teachers, tokenizer, prompts, readings):
    """The student's rows (the configured evidence fusion of both teachers) and accounts."""
    plan = model_plans(cfg)[0]
    return plan_data(cfg, plan, teachers, tokenizer, prompts, readings)


def dense_float64(teacher: LocalTeacher):
    return copy.deepcopy(teacher.model).to(torch.float64).eval()


@pytest.mark.parametrize("temperature", [1.0, 1.7])
def test_local_teacher_scores_equal_a_dense_float64_recomputation(tutor, temperature):
    """Top-k ids and log-probs at the scoring temperature, and the observed tokens' log-probs
    at temperature 1, of answers of different lengths batched with padding (the empty one too)."""
    prompts = ["Where does Mo Ka live?", "1+2", "What is it?", "reverse: ab"]
    answers = ["Quenbrook", "3", "", "ba ba ba"]
    k = 5
    rows = tutor.score(prompts, answers, top_k=k, temperature=temperature)
    model = dense_float64(tutor)
    for prompt, answer, got in zip(prompts, answers, rows, strict=True):
        ids, start = render_answer(tutor.tokenizer, prompt, answer, "t")
        assert got.ids.tolist() == ids and got.start == start
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0]
        plain = torch.log_softmax(logits, dim=-1)
        observed = plain[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
        torch.testing.assert_close(
            torch.from_numpy(got.token_logprobs).double(), observed, rtol=0, atol=2e-5
        )
        dense = torch.log_softmax(logits[start - 1 : -1] / temperature, dim=-1)
        top, top_ids = dense.topk(k, dim=-1)
        assert torch.equal(torch.from_numpy(got.top_ids), top_ids)
        torch.testing.assert_close(
            torch.from_numpy(got.top_logprobs).double(), top, rtol=0, atol=2e-5
        )
        bits = -observed.sum() / math.log(2)
        assert got.bits() == pytest.approx(float(bits), rel=1e-5)


def greedy_text(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """The argmax path from the prompt, one float64 forward pass per token."""
    ids = encode_prompts(tokenizer, [prompt], "t")[0]
    out: list[int] = []
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids + out])).logits[0, -1]
        token = int(logits.argmax())
        if token == tokenizer.eos_token_id:
            break
        out.append(token)
    return tokenizer.decode(out)


def test_greedy_answers_follow_the_argmax_path(teachers, prompts):
    texts = prompts.texts[:3] + prompts.texts[-3:]
    for teacher in teachers:
        (greedy,) = teacher.complete(texts, samples=1, max_new_tokens=6, seed=0)
        model = dense_float64(teacher)
        assert greedy == [greedy_text(model, teacher.tokenizer, p, 6) for p in texts]


def test_sampled_answers_differ_from_greedy_are_seeded_and_leave_the_rng_alone(tutor):
    prompts = [f"Where does Mo Ka{i} live?" for i in range(8)]
    args = dict(samples=2, max_new_tokens=6)
    state = torch.get_rng_state()
    first = tutor.complete(prompts, seed=5, **args)
    assert torch.equal(torch.get_rng_state(), state)
    assert tutor.complete(prompts, seed=5, **args) == first
    assert first[0] != first[1]
    assert tutor.complete(prompts, seed=6, **args)[1] != first[1]
    assert tutor.complete(prompts, seed=6, **args)[0] == first[0]


def test_prompts_per_tag_sets_each_domains_share(config_file, world):
    """A count per domain: a smaller domain repeats its prompts in order, one left out of the
    mapping keeps all of its own."""
    cfg = load_config(config_file, ["student.prompts_per_tag={facts: 5}"])
    prompts = world_sets(cfg, world).train
    arithmetic = [e.prompt for e in world.train["arithmetic"]]
    facts = [e.prompt for e in world.train["facts"]][:5]
    assert prompts.texts == arithmetic + facts
    assert prompts.tags == ["arithmetic"] * len(arithmetic) + ["facts"] * 5
    cfg = load_config(config_file, [f"student.prompts_per_tag={{facts: {len(facts) * 3}}}"])
    pool = [e.prompt for e in world.train["facts"]]
    repeated = world_sets(cfg, world).train.texts[len(arithmetic) :]
    assert repeated == [pool[i % len(pool)] for i in range(len(facts) * 3)]


@pytest.mark.parametrize("sft", ["chosen", "gold"])
@pytest.mark.parametrize("weight", ["0.25", "{facts: 0.25}"])
def test_fine_tuning_baselines_learn_the_prompts_at_the_students_weight(
    config_file, tokenizer, prompts, data, sft, weight
):
    """seqkd and the oracle get the student's prompt loss too, so every model of a benchmark
    has the same recipe: each prompt token after the first is a label at its domain's weight
    (none where that is 0)."""
    cfg = load_config(config_file, [f"student.prompt_loss_weight={weight}"])
    plan = ModelPlan(f"baseline:{sft}", "evidence" if sft == "chosen" else None, sft=sft)
    batches, loss_fn = plan_batches(cfg, plan, tokenizer, prompts, data[0])
    rows = data[0]
    domain_of = {
        tuple(p): prompts.tags[i] for p, i in zip(rows.prompts, rows.prompt_of, strict=True)
    }
    assert loss_fn is sft_loss
    seen = set()
    for index in range(4):
        batch = batches(index)
        weights_of = batch.get("label_weights", torch.ones(batch["labels"].shape))
        for ids, labels, weights in zip(
            batch["input_ids"], batch["labels"], weights_of, strict=True
        ):
            prompt = next(p for p in domain_of if tuple(ids[: len(p)].tolist()) == p)
            n, domain = len(prompt), domain_of[prompt]
            seen.add(domain)
            assert labels[0] == IGNORE
            if domain == "facts" or weight == "0.25":
                assert torch.equal(labels[1:n], ids[1:n]) and torch.all(weights[1:n] == 0.25)
            else:
                assert torch.all(labels[:n] == IGNORE)
            answer = labels[n:] != IGNORE
            assert answer.any() and torch.all(weights[n:][answer] == 1.0)
    assert seen == {"facts", "arithmetic"}


@pytest.mark.parametrize("sft", [None, "gold"])
def test_a_curriculum_draws_its_first_steps_from_its_domains_alone(
    config_file, tokenizer, prompts, data, sft
):
    """Facts first, for 2 steps of 3 length buckets each: those batches hold facts rows only,
    then every domain comes in; the distilled rows know their prompts' domains through
    `prompt_of`, the oracle's through the prompts."""
    cfg = load_config(
        config_file,
        ["student.curriculum={first: [facts], steps: 2}", "student.train.length_buckets=2"],
    )
    plan = ModelPlan("baseline:oracle", sft="gold") if sft else model_plans(cfg)[0]
    batches, _ = plan_batches(cfg, plan, tokenizer, prompts, None if sft else data[0])
    facts = {tuple(p) for p, d in zip(data[0].prompts, prompts.tags, strict=True) if d == "facts"}
    assert data[0].prompt_of == list(range(len(prompts.texts)))

    def domains_of(index: int) -> set[str]:
        batch = batches(index)
        rows = [
            ids[mask.bool()].tolist()
            for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)
        ]
        return {"facts" if any(tuple(r[: len(p)]) == p for p in facts) else "other" for r in rows}

    assert [domains_of(i) for i in range(4)] == [{"facts"}] * 4
    assert set().union(*(domains_of(i) for i in range(4, 12))) == {"facts", "other"}


def test_student_rows_never_see_gold_answers(cfg, world, teachers, tokenizer, prompts, data):
    """Garbled gold answers: the same prompts, readings, rows and accounts (only the oracle's
    gold differs)."""

    def garbled(split: dict[str, list[Example]]) -> dict[str, list[Example]]:
        return {
            d: [Example(e.domain, e.prompt, f"#{i}?") for i, e in enumerate(examples)]
            for d, examples in split.items()
        }

    fake = dataclasses.replace(world, train=garbled(world.train), heldout=garbled(world.heldout))
    fake_prompts = world_sets(cfg, fake).train
    assert fake_prompts.texts == prompts.texts and fake_prompts.tags == prompts.tags
    assert fake_prompts.gold != prompts.gold
    fake_readings = teacher_readings(cfg, teachers, fake_prompts)
    plan = model_plans(cfg)[0]
    rows, accounts = data
    again, again_accounts = plan_data(cfg, plan, teachers, tokenizer, fake_prompts, fake_readings)
    assert again.prompts == rows.prompts and again.completions == rows.completions
    assert again.offsets == rows.offsets
    for name in ("ids", "logprobs", "tail", "mask"):
        assert torch.equal(getattr(again.targets, name), getattr(rows.targets, name))
    assert again_accounts == accounts
    expected = [(d, e.prompt) for d in ("arithmetic", "facts") for e in world.train[d][:16]]
    assert list(zip(prompts.tags, prompts.texts, strict=True)) == expected
    assert rows.prompts == encode_prompts(tokenizer, prompts.texts, "t")


def test_loss_fn_equals_the_dense_reference_on_a_batch(data, tokenizer):
    """Positions whose target is masked out count in the cross-entropy part only."""
    rows, _ = data
    batch = distillation_batches(rows, tokenizer.pad_token_id, 5, seed=1)(3)
    mask = batch["target_mask"]
    assert mask.dtype == torch.bool and len(mask) == len(batch["target_ids"])
    mask[::3] = False
    student_model = build_model("qwen", load_config(TINY).teachers[2].model, tokenizer, 0)
    student_model = student_model.double()
    loss_fn = distillation_loss("jsd", 0.3, 1.5, 0.25, len(tokenizer))
    out = loss_fn(student_model, batch)
    labels = batch["labels"][:, 1:]
    counted = labels != IGNORE
    logits = student_model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).logits
    targets = SparseTargets(
        batch["target_ids"], batch["target_logprobs"].double(), batch["target_tail"].double(),
        mask,
    )  # fmt: skip
    expected = reference_distill_loss(
        logits[:, :-1][counted], targets, "jsd", beta=0.3, temperature=1.5, ce_weight=0.25,
        labels=labels[counted], reduction="sum",
    )  # fmt: skip
    assert out.tokens == int(counted.sum()) == len(batch["target_ids"])
    torch.testing.assert_close(out.loss_sum, expected, rtol=1e-9, atol=0)
    assert set(out.parts) == {"divergence", "cross_entropy"}


@pytest.mark.parametrize("by_domain", [{"facts": 0.3, "arithmetic": 0.7}, {"facts": 0.3}])
def test_prompt_weights_add_each_rows_prompt_cross_entropy_at_its_weight(
    data, tokenizer, prompts, by_domain
):
    """A row's prompt tokens after the first count at its domain's weight (none at 0): the
    fused loss against a dense float64 cross-entropy, row by row."""
    rows, _ = data
    weights = [by_domain.get(prompts.tags[i], 0.0) for i in rows.prompt_of]
    plain_batches = distillation_batches(rows, tokenizer.pad_token_id, 5, seed=1)
    weighted = distillation_batches(rows, tokenizer.pad_token_id, 5, 1, prompt_weights=weights)
    index = next(i for i in range(40) if weighted(i)["prompt_weights"].unique().numel() == 2)
    batch = weighted(index)
    student_model = build_model("qwen", load_config(TINY).teachers[2].model, tokenizer, 0)
    student_model = student_model.double()
    loss_fn = distillation_loss("forward_kl", 0.5, 1.0, 0.0, len(tokenizer))
    plain = loss_fn(student_model, plain_batches(index))
    with_prompts = loss_fn(student_model, batch)
    logits = student_model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).logits
    expected, unweighted, tokens = torch.zeros((), dtype=torch.float64), 0.0, 0
    for row, weight in enumerate(batch["prompt_weights"].tolist()):
        prompt_length = int((batch["labels"][row] != IGNORE).nonzero()[0])
        ids = batch["input_ids"][row, 1:prompt_length]
        log_probs = logits[row, : prompt_length - 1].log_softmax(-1)
        cross_entropy = -log_probs.gather(-1, ids[:, None]).sum()
        expected += weight * cross_entropy
        unweighted += float(cross_entropy.detach()) * (weight > 0)
        tokens += len(ids) * (weight > 0)
    assert tokens > 0 and with_prompts.tokens == plain.tokens
    torch.testing.assert_close(with_prompts.loss_sum - plain.loss_sum, expected)
    with pytest.raises(ValueError, match="3 prompt weights for"):
        distillation_batches(rows, tokenizer.pad_token_id, 5, 1, prompt_weights=[0.1] * 3)
    torch.testing.assert_close(with_prompts.parts["prompt_cross_entropy"], unweighted)


def full_vocabulary_kl(student_model, teacher_model, rows, pad_id: int) -> float:
    """Token-mean KL(teacher ‖ student) over every answer position, on full logits."""
    input_ids, attention_mask = pad_right(
        [p + c for p, c in zip(rows.prompts, rows.completions, strict=True)], pad_id
    )
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    for r, (p, c) in enumerate(zip(rows.prompts, rows.completions, strict=True)):
        mask[r, len(p) - 1 : len(p) - 1 + len(c)] = True
    with torch.no_grad():
        s = student_model(input_ids=input_ids, attention_mask=attention_mask).logits
        t = teacher_model(input_ids=input_ids, attention_mask=attention_mask).logits
    return float(divergence(s, t, "forward_kl", mask=mask))


def test_distillation_reduces_the_divergence_to_a_same_tokenizer_teacher(
    cfg, teachers, tokenizer, prompts, readings, tutor
):
    plan = ModelPlan("baseline:single:tutor", "fixed", {"tutor": 1.0})
    rows, accounts = plan_data(cfg, plan, teachers, tokenizer, prompts, readings)
    assert set(accounts["mass"]) == {"arithmetic", "facts"}
    assert all(m == {"tutor": 1.0, "counter": 0.0} for m in accounts["mass"].values())
    model = build_model("qwen", cfg.student.model, tokenizer, 0)
    before = full_vocabulary_kl(model, tutor.model, rows, tokenizer.pad_token_id)
    records = train(
        model,
        distillation_batches(rows, tokenizer.pad_token_id, 16, seed=0),
        distillation_loss("forward_kl", 0.5, 1.0, 0.0, len(tokenizer)),
        steps=40,
        lr=3e-3,
        warmup_steps=4,
    )
    after = full_vocabulary_kl(model, tutor.model, rows, tokenizer.pad_token_id)
    assert after < 0.5 * before
    assert records[-1]["divergence"] < 0.5 * records[0]["divergence"]


def chain_rule(probs: torch.Tensor, texts: list[str], seen: str, digit: str) -> float:
    """P(next byte is `digit` | the teacher token began with `seen`), from a dense row."""
    consistent = [i for i, text in enumerate(texts) if text.startswith(seen)]
    hits = [i for i in consistent if texts[i].startswith(seen + digit)]
    return float(probs[hits].sum() / probs[consistent].sum())


def test_a_teacher_of_another_tokenizer_is_projected_by_the_chain_rule(teachers, tokenizer):
    """`counter` reads "405" as one token where the student has "4", "0", "5": the student's
    target for each digit is the teacher's probability of the digit given the digits the
    student has already seen inside the teacher's token (full teacher rows, so no tail)."""
    counter = teachers[1]
    vocab = len(counter.tokenizer)
    texts = [counter.tokenizer.decode([i]) for i in range(vocab)]
    student_texts = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    assert all(len(t) == 1 for t in student_texts if t[:1].isdigit())  # single-digit student
    prompts, answers = ["7+70", "600+5", "12+1000", "3+4"], ["77", "605", "1013", "7"]
    rows = counter.score(prompts, answers, top_k=vocab, temperature=1.0)
    readings = Readings(
        [Candidate(i, a, (("counter", 0),)) for i, a in enumerate(answers)],
        [[i] for i in range(len(answers))],
        {"counter": rows},
    )
    data, accounts = student_targets(
        readings, [counter], tokenizer, prompts, ["arithmetic"] * 4, strategy="uniform",
        weights=torch.ones((1, 4), dtype=torch.float64), temperature=1.0,
        top_k=len(tokenizer), completions_per_prompt=1,
    )  # fmt: skip
    model = dense_float64(counter)
    digit_ids = {d: tokenizer.convert_tokens_to_ids(d) for d in "0123456789"}
    grouped = 0
    for i, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        ids, _ = render_answer(tokenizer, prompt, answer, "student")
        assert data.prompts[i] + data.completions[i] == ids
        assert len(data.completions[i]) == len(answer) + 1  # a digit per token, end-of-turn
        teacher_ids = rows[i].ids.tolist()
        pieces = [texts[t] for t in teacher_ids[rows[i].start : -1]]
        assert "".join(pieces) == answer
        grouped += any(len(p) > 1 for p in pieces)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([teacher_ids])).logits[0]
        dense = torch.softmax(logits[:, :vocab], dim=-1)
        targets = range(data.offsets[i], data.offsets[i + 1])
        got = torch.zeros(len(targets), len(tokenizer), dtype=torch.float64)
        for j, row in enumerate(targets):
            got[j, data.targets.ids[row]] = data.targets.logprobs[row].double().exp()
        assert bool(data.targets.mask[data.offsets[i] : data.offsets[i + 1]].all())
        for byte, _ in enumerate(answer):  # the student token at `byte` is one digit
            m = max(n for n in range(len(pieces)) if len("".join(pieces[:n])) <= byte)
            seen = answer[len("".join(pieces[:m])) : byte]
            probs = dense[rows[i].start + m - 1].double()
            for digit, sid in digit_ids.items():
                expected = chain_rule(probs, texts, seen, digit)
                assert float(got[byte, sid]) == pytest.approx(expected, abs=2e-6)
        eos = dense[len(teacher_ids) - 2, counter.tokenizer.eos_token_id]
        assert float(got[-1, tokenizer.eos_token_id]) == pytest.approx(float(eos), abs=2e-6)
    assert grouped >= 2  # the teacher grouped digits the student splits
    assert 0.0 <= accounts["tail"]["counter"] < 1.0


@pytest.mark.parametrize("family", ["qwen", "gemma", "gpt-oss"])
def test_final_hidden_states_times_the_head_are_the_logits(family, tokenizer):
    size = load_config(TINY).teachers[1].model  # has experts for gpt-oss
    model = build_model(family, size, tokenizer, 0).eval()
    ids = torch.tensor([[1, 5, 9, 13, 2, 0], [1, 7, 3, 0, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        hidden = final_hidden_states(model, ids, mask)
        logits = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(hidden @ fused_head_weight(model).T, logits)


def test_a_soft_capped_student_is_refused():
    config = AutoConfig.for_model(
        "gemma3_text", vocab_size=32, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=1, num_key_value_heads=1, head_dim=16, final_logit_softcapping=30.0,
    )  # fmt: skip
    with pytest.raises(UserError, match="final_logit_softcapping"):
        fused_head_weight(AutoModelForCausalLM.from_config(config))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["student.teachers[0]=nobody"],
            "student.teachers[0]: no teacher named 'nobody' (teachers: tutor, counter)",
        ),
        (["student.teachers=[tutor,tutor]"], "student.teachers: a teacher is listed twice"),
        (["student.teachers=[]"], "student.teachers: List should have at least 1 item"),
        (
            ["student.fusion.weights={tutor: 0.5, counter: 0.4}"],
            "student.fusion.weights: must be non-negative and sum to 1, got 0.9",
        ),
        (
            ["student.fusion.weights={tutor: 0.5, nobody: 0.5}"],
            "student.fusion.weights: unknown teacher(s) ['nobody']",
        ),
        (
            ["student.fusion.strategy=fixed"],
            "student.fusion.weights: strategy fixed needs a weight per teacher",
        ),
        (
            ["student.fusion.routes={facts: tutor, arithmetic: nobody}"],
            "student.fusion.routes: unknown teacher(s) ['nobody']",
        ),
        (
            ["student.fusion.routes={facts: tutor}"],
            "student.fusion.routes: no teacher for tag(s) ['arithmetic']",
        ),
        (
            ["student.fusion.strategy=route"],
            "student.fusion.routes: strategy route needs a teacher per tag",
        ),
        (["student.fusion.strategy=best"], "student.fusion.strategy: Input should be"),
        (
            ["student.fusion.temperature=0"],
            "student.fusion.temperature: Input should be greater than 0",
        ),
        (
            ["benchmark.baselines=[single]", "student=null"],
            "config: benchmark: baselines are trained beside a student; add student:",
        ),
        (
            ["benchmark.baselines=[route]"],
            "config: benchmark.baselines: route needs student.fusion.routes",
        ),
        (["benchmark.baselines=[nonsense]"], "benchmark.baselines[0]: Input should be"),
        (["student.loss=kl"], "student.loss: Input should be"),
        (["student.top_k=0"], "student.top_k: Input should be greater than 0"),
        (["student.tags=['']"], "student.tags[0]: String should have at least 1 character"),
        (
            ["student.prompts_per_tag={strings: 4}"],
            "student.prompts_per_tag: ['strings'] not among the student's tags",
        ),
        (
            ["student.prompts_per_tag={facts: 0}"],
            "student.prompts_per_tag: facts: 0 is not a positive number of prompts",
        ),
        (
            ["student.prompt_loss_weight={strings: 0.2}"],
            "student.prompt_loss_weight: ['strings'] not among the student's tags",
        ),
        (
            ["student.prompt_loss_weight={facts: 2}"],
            "student.prompt_loss_weight: facts: 2 is not a weight between 0 and 1",
        ),
        (
            ["student.prompt_loss_weight={poetry: 0.1}"],
            "student.prompt_loss_weight: ['poetry'] not among the student's tags",
        ),
        (
            ["student.prompts_per_tag={poetry: 3}"],
            "student.prompts_per_tag: ['poetry'] not among the student's tags",
        ),
        (
            ["student.curriculum={first: [strings], steps: 2}"],
            "student.curriculum.first: ['strings'] not among the student's tags",
        ),
        (
            ["student.curriculum={first: [facts, arithmetic], steps: 2}"],
            "student.curriculum.first: names every tag of the student",
        ),
        (
            ["student.curriculum={first: [facts], steps: 4}"],
            "student.curriculum.steps: 4 is not below the student's 4 training steps",
        ),
        (
            ["student.curriculum={first: [], steps: 2}"],
            "student.curriculum.first: List should have at least 1 item",
        ),
    ],
)
def test_bad_student_config_is_one_line(config_file, overrides, message):
    with pytest.raises(UserError) as error:
        load_config(config_file, overrides)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.slow
def test_run_distils_the_student_and_resumes_after_a_crash(
    cfg, world, tmp_path, monkeypatch, capsys
):
    """`polydistill run` (the pipeline it calls): killed after training, run again, it resumes
    from the finished checkpoint; the student joins metrics.json with its train log, accounts
    and report, and loads as a checkpoint."""
    import polydistill.pipeline as pipeline

    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"heldout_limit": 3})})
    out = tmp_path / "out"
    evaluate = workers.evaluate_model

    def crash_on_the_student(model, tokenizer, heldout, new_tokens, batch, who, *rest, **named):
        if who == "student":
            raise KeyboardInterrupt
        return evaluate(model, tokenizer, heldout, new_tokens, batch, who, *rest, **named)

    monkeypatch.setattr(workers, "evaluate_model", crash_on_the_student)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(cfg, out, world_inputs(cfg))
    assert not out.exists()
    (work,) = [p for p in tmp_path.iterdir() if ".student-" in p.name]
    assert (work / "checkpoints" / "step-00000004").is_dir()
    monkeypatch.setattr(workers, "evaluate_model", evaluate)
    capsys.readouterr()

    metrics = pipeline.run(cfg, out, world_inputs(cfg))
    assert "student: resuming from" in capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert set(metrics["models"]) == {"teacher:tutor", "teacher:counter", "student"}
    trained, teacher = metrics["models"]["student"], metrics["models"]["teacher:tutor"]
    assert set(trained) == set(teacher) == {"accuracy", "bits_per_byte", "params"}
    assert set(trained["accuracy"]) == set(metrics["domains"])
    assert all(math.isfinite(b) and b > 0 for b in trained["bits_per_byte"].values())
    log = (out / "train_logs" / "student.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [1, 2, 3, 4]
    accounts = json.loads((out / "contributions.json").read_text())
    assert accounts["teachers"] == ["tutor", "counter"] and accounts["strategy"] == "evidence"
    assert set(accounts["mass"]) == {"arithmetic", "facts"}
    for mass in accounts["mass"].values():
        assert sum(mass.values()) == pytest.approx(1.0, abs=1e-5)
    assert len(accounts["examples"]) == 32
    assert (out / "report.html").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    model = AutoModelForCausalLM.from_pretrained(out / "student")
    tokenizer = AutoTokenizer.from_pretrained(out / "student")
    assert type(model).__name__ == "Qwen3ForCausalLM" and tokenizer.chat_template
    assert sum(p.numel() for p in model.parameters()) == trained["params"]


def test_the_benchmarks_models_train_the_same_in_two_worker_processes(cfg, tmp_path, monkeypatch):
    """With two cores the student and its baselines train two at a time in spawned workers
    (one thread each); their scores and logs equal those of one-by-one training in this
    process, which trains on the models' threads rather than its own; the student's weights
    are the same bytes."""
    import polydistill.pipeline as pipeline

    baselines = BenchmarkConfig(baselines=["single", "seqkd", "oracle"])
    one = cfg.model_copy(update={"benchmark": baselines, "threads": 1})
    kept = baselines.model_copy(update={"keep_models": True})  # same training, weights kept
    two = cfg.model_copy(update={"benchmark": kept, "threads": 2})
    assert workers.worker_count(one, 5) == (1, 1)
    assert workers.worker_count(two, 5) == (2, 1)
    wider = cfg.student.model_copy(
        update={"train": cfg.student.train.model_copy(update={"threads": 2})}
    )
    assert workers.worker_count(two.model_copy(update={"student": wider}), 5) == (1, 2)
    train_model, settings = workers.train_model, set()

    def recorded(*args, **kwargs):
        settings.add((torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()))
        return train_model(*args, **kwargs)

    monkeypatch.setattr(workers, "train_model", recorded)
    torch.set_num_threads(2)
    try:
        here = pipeline.run(one, tmp_path / "here", world_inputs(one))
    finally:
        torch.set_num_threads(1)
    assert settings == {(1, True)}
    apart = pipeline.run(two, tmp_path / "apart", world_inputs(two))
    names = {"student", "baseline:single:tutor", "baseline:single:counter"}
    names |= {"baseline:seqkd", "baseline:oracle"}
    assert names <= set(apart["models"])
    assert apart == here
    for name in names:
        log = name.replace(":", "__") + ".jsonl"
        lines = [
            [json.loads(line)["loss"] for line in (tmp_path / out / "train_logs" / log).open()]
            for out in ("here", "apart")
        ]
        assert lines[0] == lines[1] and len(lines[0]) == 4
    weights = [
        (tmp_path / out / "student" / "model.safetensors").read_bytes() for out in ("here", "apart")
    ]
    assert weights[0] == weights[1]
    assert not (tmp_path / "here" / "models").exists()
    models = tmp_path / "apart" / "models"
    assert sorted(p.name for p in models.iterdir()) == [
        "oracle", "seqkd", "single-counter", "single-tutor"
    ]  # fmt: skip
    oracle = AutoModelForCausalLM.from_pretrained(models / "oracle")
    assert (
        sum(p.numel() for p in oracle.parameters()) == apart["models"]["baseline:oracle"]["params"]
    )
    assert (models / "oracle" / "model.safetensors").read_bytes() != weights[1]


def test_validation_chooses_each_models_weights_by_its_own_teachers_answers(cfg, world, tmp_path):
    """`student.validate_every`: each model is scored on the validation prompts against the
    answers its own plan learns from (a single teacher's: that teacher's; the oracle's: gold),
    every 2 steps in the workers, and keeps its best weights; metrics say which step."""
    import polydistill.pipeline as pipeline

    checked = cfg.model_copy(
        update={
            "benchmark": BenchmarkConfig(baselines=["single", "oracle"]),
            "threads": 2,
            "student": cfg.student.model_copy(update={"validate_every": 2}),
        }
    )
    records = world_sets(checked, world).validation
    prompts = as_prompts(records)
    assert len(prompts.texts) == sum(len(world.validation[d]) for d in ("facts", "arithmetic"))
    teachers = student_teachers(checked, world.teachers)
    readings = teacher_readings(checked, teachers, prompts)
    plans = {p.name: p for p in model_plans(checked)}
    by_plan = {
        name: validation_references(checked, plan, teachers, records, prompts, readings)
        for name, plan in plans.items()
    }
    gold = {
        d: [example_record(e, "validation", f"world {d} validation") for e in world.validation[d]]
        for d in ("facts", "arithmetic")
    }
    assert by_plan["baseline:oracle"] == gold
    counter = teachers[1].complete(prompts.texts, samples=1, max_new_tokens=8, seed=0)[0]
    assert [
        e.reference for d in ("arithmetic", "facts") for e in by_plan["baseline:single:counter"][d]
    ] == [a.strip() for a in counter]
    assert [e.messages for e in by_plan["student"]["facts"]] == [e.messages for e in gold["facts"]]

    metrics = pipeline.run(checked, tmp_path / "out", world_inputs(checked))
    for name in plans:
        selection = metrics["models"][name]["selection"]
        scores = [p["score"] for p in selection["history"]]
        assert [p["step"] for p in selection["history"]] == [2, 4]
        assert selection["score"] == max(scores) and 0 <= selection["score"] <= 1
        assert selection["step"] == selection["history"][scores.index(max(scores))]["step"]
        log = tmp_path / "out" / "train_logs" / (name.replace(":", "__") + ".jsonl")
        records = [json.loads(line) for line in log.open()]
        assert [r["validation"] for r in records if "validation" in r] == scores


def test_validation_cannot_choose_from_a_store(config_file):
    with pytest.raises(UserError) as error:
        load_config(
            config_file, ["student.validate_every=2", f"student.store={config_file.parent}"]
        )
    assert str(error.value).startswith("student.validate_every: a store (student.store) holds")


def test_a_leave_one_out_plan_reuses_the_runs_projections_exactly(
    cfg, teachers, tokenizer, prompts, readings
):
    """The run's projections dict, filled by the student's plan over every teacher, serves a
    plan without one of them; its rows equal those computed afresh from readings gathered
    without it, and its accounts name only the teachers left."""
    shared: dict = {}
    plan_data(cfg, model_plans(cfg)[0], teachers, tokenizer, prompts, readings, shared)
    left_out = teachers[0].name
    plan = ModelPlan("baseline:without", "evidence", without=left_out)
    reused, accounts = plan_data(cfg, plan, teachers, tokenizer, prompts, readings, shared)
    others = [t for t in teachers if t.name != left_out]
    fresh, _ = plan_data(
        cfg,
        ModelPlan("fresh", "evidence"),
        others,
        tokenizer,
        prompts,
        readings_without(readings, left_out),
    )
    assert accounts["teachers"] == [t.name for t in others]
    assert reused.completions == fresh.completions and reused.offsets == fresh.offsets
    for name in ("ids", "logprobs", "tail", "mask"):
        assert torch.equal(getattr(reused.targets, name), getattr(fresh.targets, name))
