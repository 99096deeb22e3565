"""Each world teacher reads a conversation exactly as its own chat template renders it:
`score`'s rows begin with `apply_chat_template(messages, add_generation_prompt=True)`'s ids, and
`complete` answers from there (the same answer as the template's ids given to the model)."""

import pytest
import torch

from polydistill.chat import PlainText, bos_prefix, encode_text
from polydistill.data.records import Turn
from polydistill.teachers.local import local_teacher

CONVERSATION = (
    Turn("system", "Answer with the result only."),
    Turn("user", "reverse: ab"),
    Turn("assistant", "ba"),
    Turn("user", "12+7="),
)


@pytest.mark.parametrize("name", ["gemma", "gptoss", "qwen"])
def test_a_teacher_reads_a_conversation_through_its_own_template(tiny_world, name):
    teacher = local_teacher(name, tiny_world.teachers[name], batch_size=4)
    tok = teacher.tokenizer
    messages = [{"role": t.role, "content": t.content} for t in CONVERSATION]
    want = tok.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    (rows,) = teacher.score([CONVERSATION], ["19"], top_k=3, temperature=1.0)
    assert list(rows.ids[: rows.start]) == want
    assert list(rows.ids[rows.start :]) == [*encode_text(tok, "19"), tok.eos_token_id]
    (answer,) = teacher.complete([CONVERSATION], samples=1, max_new_tokens=4, seed=0)[0]
    with torch.no_grad():
        out = teacher.model.generate(
            input_ids=torch.tensor([want]), max_new_tokens=4, do_sample=False,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )  # fmt: skip
    ids = out[0, len(want) :].tolist()
    ids = ids[: ids.index(tok.eos_token_id)] if tok.eos_token_id in ids else ids
    assert answer == tok.decode(ids)
    (plain,) = teacher.score([PlainText("12+7=")], [" 19"], top_k=3, temperature=1.0)
    assert list(plain.ids[: plain.start]) == bos_prefix(tok) + encode_text(tok, "12+7=")
