"""Tokenizers shared by the alignment tests: the real vocabularies and small hand-made ones.

`TOKENIZERS` maps a name to a cached factory; every property test runs over all ordered pairs,
so adding a tokenizer style here (e.g. the world's) extends them all.
"""

import functools

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from polydistill.align.tokenbytes import backend_of
from polydistill.world.real_vocab import (
    REAL_TOKENIZERS,
    added_token,
    byte_level_bpe_json,
    metaspace_bpe_json,
)
from polydistill.world.tokenizers import GEMMA_TEMPLATE, QWEN_PATTERN, QWEN_TEMPLATE

TOKENIZERS = {name: functools.cache(factory) for name, factory in REAL_TOKENIZERS.items()}


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
