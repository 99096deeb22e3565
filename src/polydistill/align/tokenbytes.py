"""The exact UTF-8 bytes behind every token of a Hugging Face fast tokenizer.

Cross-tokenizer alignment works in bytes, never in characters: a byte-level BPE token or a
SentencePiece `<0xNN>` byte-fallback token can hold part of a multibyte character, so the
character offsets a tokenizer reports cannot place it. Instead each vocabulary entry is spelled
back to its bytes once per tokenizer (`vocab_bytes`):

- byte-level BPE (GPT-2, Qwen, o200k): every character of a piece is one byte in GPT-2's
  byte-to-unicode spelling;
- SentencePiece-style (Gemma, Llama 2, T5; BPE or unigram): `▁` is a space and `<0xNN>` is the
  byte NN when the model has byte fallback;
- added tokens (chat markers, BOS): their content as UTF-8; the special ones are flagged so
  that they are never matched to text.

`token_byte_lengths` then gives each token of an encoding its byte length and checks that the
tokens concatenate to exactly the text's bytes, so a lossy normaliser is an error, not a silent
misalignment.
"""

import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer, models

from polydistill.errors import UserError


def _gpt2_byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible spelling: printable bytes stand for themselves, the rest move to 256+."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    spelling = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in spelling:
            spelling[b] = chr(256 + shifted)
            shifted += 1
    return spelling


BYTE_TO_UNICODE = _gpt2_byte_to_unicode()
# str.translate tables: byte-level spelling <-> latin-1 characters (one per byte).
_UNICODE_TO_LATIN1 = str.maketrans({u: chr(b) for b, u in BYTE_TO_UNICODE.items()})
_LATIN1_TO_UNICODE = str.maketrans({chr(b): u for b, u in BYTE_TO_UNICODE.items()})
_BYTE_FALLBACK = {f"<0x{b:02X}>": bytes([b]) for b in range(256)}


def byte_level_spelling(token: bytes) -> str:
    """A token's bytes in GPT-2's byte-to-unicode spelling (as byte-level vocabularies hold it)."""
    return token.decode("latin-1").translate(_LATIN1_TO_UNICODE)


@dataclass(frozen=True)
class VocabBytes:
    """Per token id: its bytes, and whether it is a special (non-text) or byte-fallback token."""

    token_bytes: list[bytes]
    lengths: np.ndarray
    is_special: np.ndarray
    is_byte_fallback: np.ndarray
    digest: str
    flat: np.ndarray  # every token's bytes end to end (uint8), token i at offsets[i]
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.token_bytes)


def backend_of(tokenizer: object, who: str) -> Tokenizer:
    """The `tokenizers.Tokenizer` behind a fast tokenizer; a clear error for slow ones."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer):
        raise UserError(
            f"{who}: tokenizer has no fast backend (byte offsets need one); convert it with "
            "PreTrainedTokenizerFast(tokenizer_object=transformers.convert_slow_tokenizer."
            "convert_slow_tokenizer(tokenizer)) and save it, so that it has a tokenizer.json"
        )
    return backend


def _spelling(backend: Tokenizer, who: str) -> str:
    if isinstance(backend.model, models.WordPiece | models.WordLevel):
        raise UserError(
            f"{who}: {type(backend.model).__name__} tokenizers drop whitespace and cannot be "
            "aligned by bytes; use a BPE or unigram tokenizer"
        )
    described = repr(backend.pre_tokenizer) + repr(backend.decoder)
    return "byte_level" if "ByteLevel" in described else "metaspace"


def _piece_bytes(piece: str, spelling: str, byte_fallback: bool) -> bytes:
    if spelling == "byte_level":
        try:
            return piece.translate(_UNICODE_TO_LATIN1).encode("latin-1")
        except UnicodeEncodeError:
            return piece.encode("utf-8")  # a piece outside the byte alphabet is literal text
    if byte_fallback and piece in _BYTE_FALLBACK:
        return _BYTE_FALLBACK[piece]
    return piece.replace("▁", " ").encode("utf-8")


def _build_vocab_bytes(backend: Tokenizer, who: str) -> VocabBytes:
    spelling = _spelling(backend, who)
    # BPE exposes its byte_fallback flag; Unigram keeps it only in the serialised model.
    model = json.loads(backend.to_str())["model"]
    byte_fallback = bool(model.get("byte_fallback")) or "ByteFallback" in repr(backend.decoder)
    added = backend.get_added_tokens_decoder()
    vocab = backend.get_vocab(with_added_tokens=False)
    size = max([*vocab.values(), *added.keys()], default=-1) + 1
    token_bytes = [b""] * size
    is_special = np.zeros(size, dtype=bool)
    is_fallback = np.zeros(size, dtype=bool)
    for piece, token_id in vocab.items():
        token_bytes[token_id] = _piece_bytes(piece, spelling, byte_fallback)
        is_fallback[token_id] = byte_fallback and piece in _BYTE_FALLBACK
    for token_id, token in added.items():
        token_bytes[token_id] = token.content.encode("utf-8")
        is_special[token_id] = token.special
        is_fallback[token_id] = False
    digest = hashlib.sha256()
    digest.update(spelling.encode())
    digest.update(np.packbits(is_special).tobytes() + np.packbits(is_fallback).tobytes())
    digest.update(b"\0".join(token_bytes))
    lengths = np.fromiter(map(len, token_bytes), dtype=np.int64, count=size)
    flat = np.frombuffer(b"".join(token_bytes), dtype=np.uint8)
    offsets = np.cumsum(lengths) - lengths
    return VocabBytes(
        token_bytes, lengths, is_special, is_fallback, digest.hexdigest(), flat, offsets
    )


# A few tokenizers per process; keyed by the backend object itself (kept alive by the entry).
_CACHE: OrderedDict[int, tuple[Tokenizer, VocabBytes]] = OrderedDict()
_CACHE_SIZE = 8


def vocab_bytes(tokenizer: object, who: str) -> VocabBytes:
    """Bytes of every token id of `tokenizer` (cached per tokenizer object)."""
    backend = backend_of(tokenizer, who)
    hit = _CACHE.get(id(backend))
    if hit is not None and hit[0] is backend:
        _CACHE.move_to_end(id(backend))
        return hit[1]
    table = _build_vocab_bytes(backend, who)
    _CACHE[id(backend)] = (backend, table)
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return table


def _mismatch(produced: bytes, expected: bytes) -> str:
    at = next(
        (i for i, (a, b) in enumerate(zip(produced, expected, strict=False)) if a != b),
        min(len(produced), len(expected)),
    )
    lo = max(0, at - 8)
    shown = expected[lo : at + 8].decode("utf-8", "replace")
    got = produced[lo : at + 8].decode("utf-8", "replace")
    return f"at byte {at}: text {shown!r} came back as {got!r}"


def _concatenated(vocab: VocabBytes, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The bytes of `ids` end to end, gathered from the flat table (no Python objects).

    The gather index runs +1 inside a token and jumps to the next token's offset at each token
    start: one cumulative sum instead of a repeat per token."""
    keep = lengths > 0
    starts, sizes = vocab.offsets[ids[keep]], lengths[keep]
    if not len(starts):
        return np.zeros(0, dtype=np.uint8)
    step = np.ones(int(sizes.sum()), dtype=np.int64)
    step[0] = starts[0]
    step[np.cumsum(sizes[:-1])] = starts[1:] - (starts[:-1] + sizes[:-1]) + 1
    return vocab.flat[np.cumsum(step)]


def token_byte_lengths(vocab: VocabBytes, ids: Sequence[int], text: str, who: str) -> np.ndarray:
    """Byte length of each token of `ids`, an encoding of `text`; they sum to len(text in UTF-8).

    A leading space the tokenizer added itself (a SentencePiece dummy prefix) is taken off the
    first token. Anything else that does not reproduce the text raises `UserError`.
    """
    expected = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    ids = np.asarray(ids, dtype=np.int64)
    lengths = vocab.lengths[ids]
    produced = _concatenated(vocab, ids, lengths)
    if np.array_equal(produced, expected):
        return lengths
    dummy_prefix = len(produced) == len(expected) + 1 and produced[:1].tobytes() == b" "
    if dummy_prefix and lengths[0] >= 1 and np.array_equal(produced[1:], expected):
        lengths[0] -= 1
        return lengths
    mismatch = _mismatch(produced.tobytes(), expected.tobytes())
    raise UserError(
        f"{who}: tokenizer does not round-trip the text ({mismatch}); "
        "its normaliser changes the text: normalise the data the same way first (e.g. "
        "unicodedata.normalize('NFC', text)) or use a tokenizer without a lossy normaliser"
    )
