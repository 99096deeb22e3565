"""Token bytes of real vocabularies and the cached teacher -> student vocabulary map."""

import numpy as np
import pytest
import quicktok
from align_tokenizers import tokenizer, toy_byte_level, toy_metaspace
from tokenizers import Tokenizer, models, normalizers

from polydistill.align import vocabmap
from polydistill.align.render import encode_text
from polydistill.align.tokenbytes import token_byte_lengths, vocab_bytes
from polydistill.errors import UserError
from polydistill.world.real_vocab import qwen_tiktoken_ranks


def test_byte_level_vocabularies_spell_back_to_the_ranked_bytes():
    gpt = vocab_bytes(tokenizer("o200k_harmony"), "gpt")
    encoding = quicktok.get_encoding("o200k_harmony")
    assert all(gpt.token_bytes[i] == encoding.decode_single_token_bytes(i) for i in range(199_998))
    assert gpt.is_special[199_998:].all() and not gpt.is_special[:199_998].any()
    qwen = vocab_bytes(tokenizer("qwen3"), "qwen")
    assert qwen.token_bytes[:151_643] == qwen_tiktoken_ranks()
    assert qwen.token_bytes[151_645] == b"<|im_end|>" and qwen.is_special[151_645]
    assert not qwen.is_special[tokenizer("qwen3").convert_tokens_to_ids("<think>")]


def test_sentencepiece_spelling_spaces_and_byte_fallback():
    gemma = tokenizer("gemma-style")
    table = vocab_bytes(gemma, "gemma")
    assert table.token_bytes[gemma.convert_tokens_to_ids("<0xF0>")] == b"\xf0"
    assert table.is_byte_fallback[gemma.convert_tokens_to_ids("<0xF0>")]
    assert table.token_bytes[gemma.convert_tokens_to_ids("▁the")] == b" the"
    text = "x 🧬 ▁"[:-2]  # an emoji the vocabulary lacks: four byte-fallback tokens
    ids = encode_text(gemma, text, "gemma")
    assert token_byte_lengths(table, ids, text, "gemma").tolist() == [1, 1, 1, 1, 1, 1]


def test_a_dummy_prefix_is_taken_off_the_first_token():
    tok = toy_metaspace(["▁ab", "ab"])
    backend = tok.backend_tokenizer
    backend.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    ids = encode_text(tok, "ab ab", "t")
    assert tok.convert_ids_to_tokens(ids) == ["▁ab", "▁ab"]
    assert token_byte_lengths(vocab_bytes(tok, "t"), ids, "ab ab", "t").tolist() == [2, 3]


def test_wordpiece_tokenizers_are_refused():
    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    with pytest.raises(UserError, match=r"teacher 'bert'.*WordPiece"):
        vocab_bytes(wordpiece, "teacher 'bert'")


def _brute_longest(student_bytes: dict[bytes, int], data: bytes) -> tuple[int, int]:
    best = max((len(b) for b in student_bytes if data.startswith(b)), default=0)
    return (student_bytes[data[:best]], best) if best else (-1, 0)


def test_map_is_direct_or_the_longest_student_prefix():
    teacher, student = tokenizer("qwen3"), tokenizer("o200k_harmony")
    vmap = vocabmap.vocab_map(teacher, student, "qwen")
    the = vmap.piece[teacher.convert_tokens_to_ids("Ġthe")]
    assert student.convert_ids_to_tokens(int(the)) == "Ġthe"
    assert vmap.piece[151_643] == student.convert_tokens_to_ids("<|endoftext|>")  # same special
    assert vmap.piece[151_644] == -1  # <|im_start|>: gpt-oss has no such token
    assert 0.5 < vmap.exact_share < 0.8
    rng = np.random.default_rng(0)
    for token_id in rng.choice(151_643, size=40, replace=False).tolist():
        data = vmap.teacher.token_bytes[token_id]
        assert (vmap.piece[token_id], vmap.piece_len[token_id]) == _brute_longest(
            vmap.student_by_bytes, data
        )


def test_identical_tokenizers_map_every_id_to_itself():
    gemma = tokenizer("gemma-style")
    vmap = vocabmap.vocab_map(gemma, gemma, "gemma")
    assert (vmap.piece[:-1] == np.arange(len(gemma))).all()


def test_regular_tokens_win_over_byte_fallback():
    vmap = vocabmap.vocab_map(tokenizer("o200k_harmony"), tokenizer("gemma-style"), "gpt")
    letter = vmap.piece[tokenizer("o200k_harmony").convert_tokens_to_ids("A")]
    assert tokenizer("gemma-style").convert_ids_to_tokens(int(letter)) == "A"


def test_map_is_cached_on_disk_by_both_digests(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYDISTILL_CACHE", str(tmp_path))
    teacher, student = toy_byte_level(["ab", "abc"]), toy_byte_level(["ab"])
    first = vocabmap.vocab_map(teacher, student, "toy")
    (stored,) = (tmp_path / "vocabmap").glob("*.npz")
    assert first.teacher.digest[:20] in stored.name and first.student.digest[:20] in stored.name
    np.savez(stored, piece=first.piece[:-1] * 0 + 7, piece_len=first.piece_len[:-1])
    vocabmap._MEMORY.clear()
    again = vocabmap.vocab_map(teacher, student, "toy")
    assert (again.piece[:-1] == 7).all()  # read back from disk, not rebuilt
