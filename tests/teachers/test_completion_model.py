"""A checkpoint read as a completion model (`template: completion`, or no chat template at all):
prompts are plain text, answers their continuations closed by eos, and such a teacher reads
beside chat teachers in one gathering."""

from polydistill.chat import completion_style
from polydistill.teachers.local import local_teacher
from polydistill.teachers.protocol import tokenizer_fingerprint
from polydistill.teachers.readings import gather_readings


def test_a_completion_teacher_answers_and_reads_plain_text(tiny_world):
    name = sorted(tiny_world.teachers)[0]
    path = tiny_world.teachers[name]
    plain = local_teacher("plain", path, batch_size=4, template="completion")
    chat = local_teacher(name, path, batch_size=4)
    assert completion_style(plain.tokenizer) and not completion_style(chat.tokenizer)
    assert tokenizer_fingerprint(plain.tokenizer)["chat_template"] == "completion"
    assert tokenizer_fingerprint(chat.tokenizer)["chat_template"] != "completion"

    prompts = ["reverse: abc =", "12+7="]
    (rows,) = [plain.score(prompts[:1], [" cba"], top_k=3, temperature=1.0)[0]]
    tok = plain.tokenizer
    prompt_ids = tok(prompts[0], add_special_tokens=False)["input_ids"]
    bos = [tok.bos_token_id] if tok("a")["input_ids"][:1] == [tok.bos_token_id] else []
    answer_ids = tok(" cba", add_special_tokens=False)["input_ids"]
    # no template markup: [BOS] prompt, answer, eos
    assert list(rows.ids) == [*bos, *prompt_ids, *answer_ids, tok.eos_token_id]
    assert rows.start == len(bos) + len(prompt_ids)

    readings = gather_readings(
        [plain, chat], prompts, samples=1, max_new_tokens=5, seed=0, top_k=3, temperature=1.0
    )
    assert set(readings.rows) == {"plain", name}
    assert all(len(r) == len(readings.candidates) for r in readings.rows.values())
