"""World tokenizer styles: the behaviours of the real families that cross-tokenizer work meets."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from polydistill.errors import UserError
from polydistill.world import domains
from polydistill.world.tokenizers import STYLES, train_tokenizer

SAMPLE = [
    "Héllo wörld 347+58=405",
    "日本語のテキスト 🙂 and Arabic: مرحبا بالعالم",
    "reverse: kfzq  double  spaces\nnew line\ttab",
    "12345678901 digits, ½ ⅓ and ١٢٣",
]
VOCAB = {"gemma": 600, "qwen": 600, "gpt-oss": 1800, "student": 600}


def corpus() -> list[str]:
    train = domains.arithmetic(0, 1500, 10, 3).train
    strings = domains.strings(0, 1500, 10, 3, 7, "abcdefghijklmnopqrstuvwxyz").train
    facts = domains.facts(0, 30).train
    return [f"{e.prompt} {e.answer}" for e in train + strings + facts]


@pytest.fixture(scope="module")
def tokenizers():
    return {style: train_tokenizer(style, corpus(), VOCAB[style]) for style in STYLES}


def pieces(tokenizer, text):
    return tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("style", STYLES)
def test_round_trip_on_multilingual_text(tokenizers, style):
    tokenizer = tokenizers[style]
    for text in SAMPLE:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
        assert tokenizer.unk_token_id not in ids


def decoded_as(style: str, text: str) -> str:
    """What a faithful tokenizer of `style` gives back for `text`.

    SentencePiece styles spell a space `▁`, so a `▁` in the text comes back as a space, as it
    does with Gemma's own tokenizer; alignment reports that text as not round-tripping.
    """
    return text.replace("▁", " ") if style in ("gemma", "student") else text


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=40))
def test_round_trip_on_random_unicode(tokenizers, text):
    for style, tokenizer in tokenizers.items():
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == decoded_as(style, text)


@pytest.mark.parametrize("style", STYLES)
def test_metaspace_character_in_text(tokenizers, style):
    text = "a▁b ▁"
    ids = tokenizers[style](text, add_special_tokens=False)["input_ids"]
    assert tokenizers[style].decode(ids) == decoded_as(style, text)


@pytest.mark.parametrize("style", ["gemma", "student"])
def test_sentencepiece_styles_use_metaspace_and_byte_fallback(tokenizers, style):
    tokens = pieces(tokenizers[style], "hi 日")
    assert any(t.startswith("▁") for t in tokens)
    assert tokens[-3:] == ["<0xE6>", "<0x97>", "<0xA5>"]


@pytest.mark.parametrize("style", ["gemma", "qwen", "student"])
def test_single_digit_styles(tokenizers, style):
    digits = [t for t in pieces(tokenizers[style], "12345+678") if any(c.isdigit() for c in t)]
    assert all(len(t.strip("▁Ġ")) == 1 for t in digits)


def test_gpt_oss_groups_digits_by_three(tokenizers):
    assert pieces(tokenizers["gpt-oss"], "1234567+89") == ["123", "456", "7", "+", "89"]


def test_byte_level_styles_spell_bytes_in_gpt2_alphabet(tokenizers):
    assert pieces(tokenizers["qwen"], " é") in (["Ġ", "Ã", "©"], ["ĠÃ", "©"], ["Ġ", "Ã©"], ["ĠÃ©"])


@pytest.mark.parametrize(
    ("style", "markers"),
    [
        ("gemma", ["<bos>", "<start_of_turn>", "<end_of_turn>", "model\n"]),
        ("qwen", ["<|im_start|>", "<|im_end|>", "assistant\n"]),
        ("gpt-oss", ["<|start|>", "<|message|>", "<|end|>", "<|channel|>final<|message|>"]),
        ("student", ["<|user|>", "<|assistant|>\n"]),
    ],
)
def test_chat_templates_render_family_markers(tokenizers, style, markers):
    tokenizer = tokenizers[style]
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "2+2"}], add_generation_prompt=True, tokenize=False
    )
    assert "2+2" in text
    for marker in markers:
        assert marker in text
    special = {
        tokenizer.convert_ids_to_tokens(i)
        for i in tokenizer(text, add_special_tokens=False)["input_ids"]
    }
    assert {m for m in markers if re.fullmatch(r"<[^>]+>", m)} <= special


@pytest.mark.parametrize("style", STYLES)
def test_saved_tokenizer_loads_with_same_ids_and_template(tokenizers, style, tmp_path):
    tokenizers[style].save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.is_fast
    assert loaded.chat_template == tokenizers[style].chat_template
    assert loaded.eos_token == tokenizers[style].eos_token
    for text in SAMPLE:
        assert (
            loaded(text, add_special_tokens=False)["input_ids"]
            == tokenizers[style](text, add_special_tokens=False)["input_ids"]
        )


@pytest.mark.parametrize("style", STYLES)
def test_the_same_corpus_trains_the_same_file(tokenizers, style):
    """The `tokenizers` unigram trainer's scores follow hash-map order (two trainings in one
    process already differ); the student style's scores are recounted, so its file is fixed."""
    again = train_tokenizer(style, corpus(), VOCAB[style])
    assert again.backend_tokenizer.to_str() == tokenizers[style].backend_tokenizer.to_str()


def test_bad_tokenizer_requests():
    with pytest.raises(UserError, match="style 'llama' is unknown"):
        train_tokenizer("llama", ["x"], 500)
    with pytest.raises(UserError, match="below the minimum"):
        train_tokenizer("gemma", ["x"], 100)
    with pytest.raises(UserError, match="empty training corpus"):
        train_tokenizer("qwen", [], 500)
