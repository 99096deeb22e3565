"""Tokenizers shared by the alignment tests: the real vocabularies, the world's styles and small
hand-made ones.

`TOKENIZERS` maps a name to a cached factory; every property test runs over all ordered pairs,
so adding a tokenizer style here extends them all. The world's styles (`world-gemma`, ...) are
trained as the world builder trains them, on a smaller sample of its domains, at its default
vocabulary sizes.
"""

import functools

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from polydistill.align.tokenbytes import backend_of
from polydistill.config import VocabSizes
from polydistill.world import domains
from polydistill.world.build import CHAT_WORDS
from polydistill.world.real_vocab import (
    REAL_TOKENIZERS,
    added_token,
    byte_level_bpe_json,
    metaspace_bpe_json,
)
from polydistill.world.tokenizers import (
    GEMMA_TEMPLATE,
    QWEN_PATTERN,
    QWEN_TEMPLATE,
    STYLES,
    train_tokenizer,
)


@functools.cache
def world_corpus() -> tuple[str, ...]:
    arithmetic = domains.arithmetic(0, 1500, 10, 3).train
    strings = domains.strings(0, 1500, 10, 3, 7, "abcdefghijklmnopqrstuvwxyz").train
    facts = domains.facts(0, 30).train
    texts = [f"{e.prompt} {e.answer}" for e in arithmetic + strings + facts]
    return (*texts, *CHAT_WORDS * 100)


def world_style(style: str):
    return lambda: train_tokenizer(style, world_corpus(), VocabSizes().of(style))


TOKENIZERS = {name: functools.cache(factory) for name, factory in REAL_TOKENIZERS.items()}
TOKENIZERS |= {f"world-{style}": functools.cache(world_style(style)) for style in STYLES}


def tokenizer(name: str) -> PreTrainedTokenizerFast:
    return TOKENIZERS[name]()


def round_trips(tok: object, text: str) -> bool:
    """Whether the tokenizer's normaliser leaves `text` recoverable (test oracle)."""
    backend = backend_of(tok, "test")
    normalized = backend.normalizer.normalize_str(text) if backend.normalizer else text
    if "ByteLevel" in repr(backend.pre_tokenizer):
        return normalized == text
    return "▁" not in text and normalized.replace("▁", " ") == text


def toy_byte_level(extra: list[str], pattern: str = QWEN_PATTERN) -> PreTrainedTokenizerFast:
    """Byte-level BPE: the 256 bytes, then `extra` tokens (utf-8), ChatML specials."""
    tokens = [bytes([b]) for b in range(256)] + [t.encode() for t in extra]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    added = [added_token(len(tokens) + i, s) for i, s in enumerate(specials)]
    spec = byte_level_bpe_json(tokens, added, pattern, nfc=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(spec.decode()),
        chat_template=QWEN_TEMPLATE,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )


def toy_metaspace(pieces: list[str]) -> PreTrainedTokenizerFast:
    """SentencePiece-style BPE with byte fallback over `pieces` (and their characters)."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    vocab = specials + [f"<0x{b:02X}>" for b in range(256)]
    vocab += sorted({c for p in pieces for c in p} - set(vocab))
    vocab += [p for p in pieces if p not in vocab]
    spec = metaspace_bpe_json(vocab, set(range(len(specials) + 256, len(vocab))), specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(spec.decode()),
        chat_template=GEMMA_TEMPLATE,
        bos_token="<bos>",
        eos_token="<end_of_turn>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
