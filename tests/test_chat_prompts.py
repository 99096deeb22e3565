"""Every model renders a prompt (`chat.Prompt`: one user turn, a conversation, completion-style
text) exactly as its own chat template does: `chat.render_prompts` / `chat.encode_prompts` equal
`tokenizer.apply_chat_template(messages, add_generation_prompt=True)`, for the world's four
tokenizer styles, the built-in templates, and the real Gemma 3, Gemma 2, Qwen3 and gpt-oss
templates as TRL ships them (`trl/chat_templates/`). What a template does with a system turn is
the template's: Gemma 3's folds it into the first user turn, gpt-oss's makes it a developer
message, Gemma 2's refuses it, which is a one-line error naming the model and the prompt.
"""

import importlib.resources

import pytest
from align_tokenizers import tokenizer, toy_byte_level, toy_metaspace

from polydistill.chat import (
    PlainText,
    bos_prefix,
    canonical,
    encode_prompts,
    encode_text,
    prompt_bytes,
    prompt_key,
    record_prompt,
    render_answers,
    render_prompts,
)
from polydistill.data.records import Turn, make_record
from polydistill.errors import UserError
from polydistill.evaluate.prompts import encode_records
from polydistill.teachers.templates import apply_template

SYSTEM = (Turn("system", "Be brief."), Turn("user", "12+7="))
EARLIER = (Turn("user", "Hi"), Turn("assistant", "Hello!"), Turn("user", "reverse: abc"))
BOTH = (Turn("system", "Answer in French."), *EARLIER)
CONVERSATIONS = [SYSTEM, EARLIER, BOTH]
TRL_TEMPLATES = importlib.resources.files("trl") / "chat_templates"


def messages(turns) -> list[dict[str, str]]:
    return [{"role": turn.role, "content": turn.content} for turn in turns]


def real_template(name: str, toy):
    """A toy tokenizer with its family's specials, given a real model's template from TRL."""

    def make():
        tok = toy()
        tok.chat_template = (TRL_TEMPLATES / f"{name}.jinja").read_text()
        return tok

    return make


def builtin(name: str, toy):
    def make():
        tok = toy()
        apply_template(tok, name, "test")
        return tok

    return make


def gemma_toy():
    return toy_metaspace(["ab", "12"])


def chatml_toy():
    return toy_byte_level(["ab"])


MODELS = {
    **{f"world-{s}": lambda s=s: tokenizer(f"world-{s}") for s in ("gemma", "qwen", "gpt-oss")},
    "world-student": lambda: tokenizer("world-student"),
    "builtin-gemma": builtin("gemma", gemma_toy),
    "builtin-chatml": builtin("chatml", chatml_toy),
    "real-gemma3": real_template("gemma3", gemma_toy),
    "real-qwen3": real_template("qwen3", chatml_toy),
    "real-gpt-oss": real_template("gptoss", chatml_toy),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_every_prompt_renders_as_the_models_own_template(name):
    tok = MODELS[name]()
    for turns in CONVERSATIONS:
        want = tok.apply_chat_template(messages(turns), add_generation_prompt=True, tokenize=False)
        (rendered,) = render_prompts(tok, [turns], "teacher 't'")
        assert rendered == want
        ids = tok.apply_chat_template(
            messages(turns), add_generation_prompt=True, tokenize=True, return_dict=False
        )
        assert encode_prompts(tok, [turns], "teacher 't'") == [ids]
        # not a comparison of a thing with itself: every turn the template keeps is in it
        assert all(turn.content in rendered for turn in turns)
    one = tok.apply_chat_template(
        [{"role": "user", "content": "12+7="}], add_generation_prompt=True, tokenize=False
    )
    assert render_prompts(tok, ["12+7=", (Turn("user", "12+7="),)], "t") == [one, one]
    assert len(set(render_prompts(tok, [*CONVERSATIONS, "12+7="], "t"))) == 4


def test_a_template_without_a_system_role_does_what_it_does():
    folded = real_template("gemma3", gemma_toy)()
    (rendered,) = render_prompts(folded, [SYSTEM], "t")
    folded_turn = "<start_of_turn>user\nBe brief.\n\n12+7=<end_of_turn>\n"
    assert rendered == f"<bos>{folded_turn}<start_of_turn>model\n"
    developer = real_template("gptoss", chatml_toy)()
    (rendered,) = render_prompts(developer, [SYSTEM], "t")
    assert "<|start|>developer<|message|># Instructions\n\nBe brief." in rendered
    refusing = real_template("gemma", gemma_toy)()
    record = make_record("train", "messages", messages=SYSTEM)
    with pytest.raises(UserError) as error:
        encode_prompts(refusing, [SYSTEM], "teacher 'gemma2'")
    assert str(error.value) == (
        f"teacher 'gemma2': the chat template refuses prompt {record.id} (system+user): "
        "System role not supported"
    )
    named = make_record("train", "messages", messages=SYSTEM, origin="mine.jsonl line 3")
    with pytest.raises(UserError, match=r"^model: the chat template refuses mine.jsonl line 3 "):
        encode_records(refusing, [named], "model")
    assert encode_prompts(refusing, [EARLIER], "t")  # alternating turns it takes


def completion_model():
    tok = toy_metaspace(["ab", "12"])
    tok.chat_template = None
    return tok


def test_a_completion_model_reads_text_and_refuses_a_conversation():
    tok = completion_model()
    # (this tokenizer adds no BOS; test_real_gemma_bench's completion model adds one)
    plain = bos_prefix(tok) + encode_text(tok, "12+7=")
    assert plain == tok("12+7=", add_special_tokens=False)["input_ids"]
    assert encode_prompts(tok, ["12+7=", PlainText("12+7=")], "t") == [plain, plain]
    for turns in CONVERSATIONS:
        record = make_record("train", "messages", messages=turns, origin="chats.jsonl line 7")
        roles = "+".join(turn.role for turn in turns)
        with pytest.raises(UserError) as error:
            render_answers(tok, [turns], ["19"], "teacher 'base'")
        message = str(error.value)
        assert message.startswith(
            f"teacher 'base': prompt {record.id} is a conversation ({roles}), and the tokenizer "
            "has no chat template"
        )
        assert "\n" not in message
        with pytest.raises(UserError, match=r"^student: chats.jsonl line 7 is a conversation"):
            encode_records(tok, [record], "student")


@pytest.mark.parametrize("name", ["world-qwen", "real-gemma3"])
def test_text_is_read_as_it_stands_by_a_chat_model_too(name):
    tok = MODELS[name]()
    ids = encode_prompts(tok, [PlainText("Once upon a time")], "t")
    assert ids == [bos_prefix(tok) + encode_text(tok, "Once upon a time")]
    assert ids != encode_prompts(tok, ["Once upon a time"], "t")  # a user turn is templated
    record = make_record("test", "text", text="Once upon a time", reference=" there")
    assert encode_records(tok, [record], "t") == ids


def test_a_prompt_keys_whole_and_one_user_turn_is_its_string():
    prompts = [
        "12+7=",
        PlainText("12+7="),
        (Turn("system", "Be brief."), Turn("user", "12+7=")),
        (Turn("system", "Be long."), Turn("user", "12+7=")),
        EARLIER,
        '{"messages": [["user", "12+7="]]}',  # a string that spells another prompt's key
        '{"text": "12+7="}',
    ]
    keys = [prompt_key(p) for p in prompts]
    assert len(set(keys)) == len(prompts)
    assert keys[0] == "12+7="  # as world stores were keyed before conversations
    assert prompt_key((Turn("user", "12+7="),)) == "12+7=" == canonical((Turn("user", "12+7="),))
    assert prompt_bytes(BOTH) == sum(len(t.content.encode()) for t in BOTH)
    records = [
        make_record("train", "text", text="a b"),
        make_record("train", "prompt", messages=(Turn("user", "q"),)),
        make_record("train", "messages", messages=BOTH),
    ]
    assert [record_prompt(r) for r in records] == [PlainText("a b"), "q", BOTH]
