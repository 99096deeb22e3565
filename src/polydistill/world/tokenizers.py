"""Tokenizer styles of the world: small, locally trained imitations of the real families.

What matters for cross-tokenizer work is imitated, not the vocabulary size:

- gemma: SentencePiece-style BPE as in Gemma's `tokenizer.json`: spaces become `▁`, bytes the
  vocabulary lacks fall back to `<0xNN>` tokens, digits are split one by one, `<bos>` starts
  every rendering, turns are `<start_of_turn>user ... <end_of_turn>`.
- qwen: byte-level BPE with Qwen's pre-tokenizer regex (one digit per token), ChatML turns
  `<|im_start|>user ... <|im_end|>`.
- gpt-oss: byte-level BPE with the o200k regex (digits in groups of up to three), harmony-like
  turns `<|start|>user<|message|> ... <|end|>`, answers on the `final` channel ending `<|return|>`.
- student: a SentencePiece-style *unigram* model (as Llama 2 and T5 use) with byte fallback and
  single digits, and `<|user|>` / `<|assistant|>` turns: different from every teacher.

Each tokenizer is trained with the `tokenizers` library and saved as a Hugging Face fast
tokenizer whose chat template travels with it, as real checkpoints do.
"""

import json
import math
from collections import Counter
from collections.abc import Iterable

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    trainers,
)
from transformers import PreTrainedTokenizerFast

from polydistill.errors import UserError

STYLES = ("gemma", "qwen", "gpt-oss", "student")

QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
O200K_PATTERN = "|".join(
    [
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"\p{N}{1,3}",
        r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
        r"\s*[\r\n]+",
        r"\s+(?!\S)",
        r"\s+",
    ]
)

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>"
    "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
GPT_OSS_TEMPLATE = (
    "{% for m in messages %}<|start|>{{ m['role'] }}"
    "{% if m['role'] == 'assistant' %}<|channel|>final{% endif %}<|message|>{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}<|return|>{% else %}<|end|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|start|>assistant<|channel|>final<|message|>{% endif %}"
)
STUDENT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}</s>{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# style -> (special tokens in id order, role of each named special, chat template)
_SPECIALS = {
    "gemma": (
        ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
        {
            "pad_token": "<pad>",
            "eos_token": "<end_of_turn>",
            "bos_token": "<bos>",
            "unk_token": "<unk>",
        },
        GEMMA_TEMPLATE,
    ),
    "qwen": (
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        {"pad_token": "<|endoftext|>", "eos_token": "<|im_end|>"},
        QWEN_TEMPLATE,
    ),
    "gpt-oss": (
        [
            "<|startoftext|>",
            "<|endoftext|>",
            "<|start|>",
            "<|message|>",
            "<|channel|>",
            "<|end|>",
            "<|return|>",
        ],
        {"pad_token": "<|endoftext|>", "eos_token": "<|return|>", "bos_token": "<|startoftext|>"},
        GPT_OSS_TEMPLATE,
    ),
    "student": (
        ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"],
        {"pad_token": "<pad>", "eos_token": "</s>", "bos_token": "<s>", "unk_token": "<unk>"},
        STUDENT_TEMPLATE,
    ),
}
_BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


_DIGIT_GROUPS = [f"{n:0{width}d}" for width in (1, 2, 3) for n in range(10**width)]


def _byte_level(pattern: str, model: models.Model) -> Tokenizer:
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _sentencepiece_like(model: models.Model) -> Tokenizer:
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Replace(" ", "▁")
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("▁", behavior="merged_with_next"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    return tokenizer


def _model_json(tokenizer: Tokenizer) -> dict:
    return json.loads(tokenizer.to_str())["model"]


def _bpe_rebuilt(
    trained: Tokenizer, specials: list[str], extra: list[str], **options
) -> models.BPE:
    """The trained BPE with `extra` tokens placed right after the specials (ids stay dense)."""
    learned = trained.get_vocab()
    ordered = specials + extra
    ordered += sorted((t for t in learned if t not in set(ordered)), key=learned.get)
    merges = [
        tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
        for m in _model_json(trained)["merges"]
    ]
    return models.BPE(vocab={t: i for i, t in enumerate(ordered)}, merges=merges, **options)


def _unigram_with_byte_fallback(
    trained: Tokenizer, specials: list[str], texts: list[str]
) -> models.Unigram:
    """The trained unigram's pieces with byte fallback, each scored by how often it is used.

    The `tokenizers` trainer gives the same pieces every time but not the same scores: its EM
    sums run in hash-map order (the last bits differ between processes) and the characters it
    keeps only because they occur get placeholder scores in hash-set order. So the scores are
    made anew from integer counts: log of each piece's share of the trained model's Viterbi
    segmentation of the corpus (hard EM's last step), pieces in order of count, then text.
    """
    counts = Counter(t for encoding in trained.encode_batch(texts) for t in encoding.tokens)
    pieces = [p for p, _ in _model_json(trained)["vocab"]]
    pieces = [p for p in pieces if p not in specials and p not in _BYTE_TOKENS]
    pieces.sort(key=lambda p: (-counts[p], p))
    total = sum(counts[p] for p in pieces)
    unused = math.log(0.5 / total)  # below every used piece
    scores = [math.log(counts[p] / total) if counts[p] else unused for p in pieces]
    floor = min(scores) - 1.0
    vocab = [(s, 0.0) for s in specials] + [(b, floor) for b in _BYTE_TOKENS]
    vocab += list(zip(pieces, scores, strict=True))
    return models.Unigram(vocab, unk_id=specials.index("<unk>"), byte_fallback=True)


def _trained(style: str, texts: list[str], vocab_size: int, specials: list[str]) -> Tokenizer:
    """Train, then rebuild the model with what the real family's vocabulary always has."""
    if style in ("qwen", "gpt-oss"):
        # gpt-oss (o200k) has every 1-3 digit group as one token; ignore_merges takes them whole.
        extra = [] if style == "qwen" else [d for d in _DIGIT_GROUPS if len(d) > 1]
        draft = _byte_level(QWEN_PATTERN if style == "qwen" else O200K_PATTERN, models.BPE())
        draft.train_from_iterator(
            texts,
            trainers.BpeTrainer(
                vocab_size=vocab_size - len(extra),
                special_tokens=specials,
                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                show_progress=False,
            ),
        )
        model = _bpe_rebuilt(draft, specials, extra, ignore_merges=bool(extra))
        return _byte_level(QWEN_PATTERN if style == "qwen" else O200K_PATTERN, model)
    if style == "gemma":
        draft = _sentencepiece_like(models.BPE(unk_token="<unk>"))
        draft.train_from_iterator(
            texts,
            trainers.BpeTrainer(
                vocab_size=vocab_size - 256, special_tokens=specials, show_progress=False
            ),
        )
        model = _bpe_rebuilt(draft, specials, _BYTE_TOKENS, byte_fallback=True, unk_token="<unk>")
        return _sentencepiece_like(model)
    draft = _sentencepiece_like(models.Unigram())
    draft.train_from_iterator(
        texts,
        trainers.UnigramTrainer(
            vocab_size=vocab_size - 256,
            special_tokens=specials,
            unk_token="<unk>",
            show_progress=False,
        ),
    )
    return _sentencepiece_like(_unigram_with_byte_fallback(draft, specials, texts))


def train_tokenizer(style: str, corpus: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a tokenizer of `style` on `corpus`, with its specials and chat template."""
    if style not in STYLES:
        raise UserError(f"tokenizer style {style!r} is unknown; choose one of {', '.join(STYLES)}")
    specials, roles, template = _SPECIALS[style]
    floor = len(specials) + 256 + 16 + (len(_DIGIT_GROUPS) if style == "gpt-oss" else 0)
    if vocab_size < floor:
        raise UserError(
            f"tokenizer {style!r}: vocab_size {vocab_size} is below the minimum {floor}"
        )
    texts = list(corpus)
    if not texts:
        raise UserError(f"tokenizer {style!r}: empty training corpus")
    try:
        tokenizer = _trained(style, texts, vocab_size, specials)
    except Exception as error:  # the tokenizers library raises a bare Exception
        if "not large enough" not in str(error):
            raise
        alphabet = len(set("".join(texts)))
        raise UserError(
            f"tokenizer {style!r}: vocab_size {vocab_size} cannot hold the corpus's {alphabet} "
            "distinct characters besides the byte tokens; raise it"
        ) from None
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **roles)
    wrapped.chat_template = template
    return wrapped
