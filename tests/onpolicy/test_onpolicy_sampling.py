"""The student's samples (`polydistill.onpolicy.sampling`): exact draws, seeded per sample,
and rows rendered as the rest of the pipeline reads them."""

import torch
from align_tokenizers import tokenizer
from onpolicy_models import prompts, tiny_model

from polydistill.chat import PlainText, encode_prompts, encode_text
from polydistill.data.records import Turn
from polydistill.onpolicy.sampling import GumbelNoise, _row, sample_answers, sample_seed


def test_gumbel_noise_draws_from_the_tempered_softmax():
    scores = torch.tensor([[2.0, 1.0, 0.0, -1.0, 3.0, -30.0]])
    rows, temperature = 40_000, 0.7
    noise = GumbelNoise([sample_seed(0, 0, i, 0) for i in range(rows)], temperature, 5)
    drawn = noise(None, scores.expand(rows, -1)).argmax(dim=1)
    counts = torch.bincount(drawn, minlength=6).double()
    want = torch.softmax(scores[0, :5].double() / temperature, dim=0)
    assert counts[5] == 0  # past the vocabulary: embedding padding, never drawn
    sigma = (rows * want * (1 - want)).sqrt()
    assert bool(((counts[:5] - rows * want).abs() < 4.5 * sigma).all()), (counts, rows * want)
    again = GumbelNoise([sample_seed(0, 0, i, 0) for i in range(rows)], temperature, 5)
    assert torch.equal(again(None, scores.expand(rows, -1)).argmax(dim=1), drawn)


def _sample(model, tok, asked, batch_size=8, refresh=0, seed=3):
    return sample_answers(
        model, tok, asked, prompt_ids=[10 + i for i in range(len(asked))], samples=2,
        temperature=1.0, max_new_tokens=8, seed=seed, refresh=refresh, batch_size=batch_size,
    )  # fmt: skip


def test_samples_are_seeded_per_sample_not_by_batch_or_global_rng():
    tok = tokenizer("world-student")
    model = tiny_model("student", 0).train()
    asked = prompts(4)
    state = torch.get_rng_state()
    first = _sample(model, tok, asked)
    assert torch.equal(torch.get_rng_state(), state)  # the training loop's RNG is left alone
    assert model.training  # and the model's mode restored
    torch.manual_seed(123)  # another global state changes nothing
    one_by_one = _sample(model, tok, asked, batch_size=1)
    assert [r.sampled for r in one_by_one.rows] == [r.sampled for r in first.rows]
    later = _sample(model, tok, asked, refresh=1)
    assert [r.sampled for r in later.rows] != [r.sampled for r in first.rows]
    assert [(r.prompt, r.sample) for r in first.rows] == [
        (i, s) for s in range(2) for i in range(4)
    ]
    assert first.truncated == sum(len(r.sampled) == 8 for r in first.rows) > 0


def test_rows_are_the_students_rendering_and_a_non_canonical_sample_is_retokenised():
    tok = tokenizer("world-student")
    prompt = prompts(1)[0]
    canonical = encode_text(tok, "reverse: abc")
    row = _row(tok, prompt, 0, 0, canonical, False)
    assert not row.retokenised and row.answer_ids == [*canonical, tok.eos_token_id]
    assert row.text == "reverse: abc"
    spelled = [i for ch in "reverse: abc" for i in encode_text(tok, ch)]
    assert spelled != canonical  # the same text, split otherwise
    row = _row(tok, prompt, 0, 0, spelled, True)
    assert row.retokenised and row.truncated and row.sampled == spelled
    assert row.text == "reverse: abc" and row.answer_ids == [*canonical, tok.eos_token_id]
    # half a UTF-8 character: the text holds U+FFFD, whose encoding the row then trains on
    lead = tok.convert_tokens_to_ids("<0xC3>")
    assert lead != tok.unk_token_id
    row = _row(tok, prompt, 0, 0, [*canonical, lead], False)
    assert row.retokenised and row.text == "reverse: abc\ufffd"
    assert row.answer_ids == [*encode_text(tok, "reverse: abc\ufffd"), tok.eos_token_id]


def test_a_conversation_and_text_are_sampled_from_their_whole_rendering():
    """The student samples after its own rendering of each prompt's whole conversation (or its
    plain text), the same draws batched (left-padded) as one by one."""
    tok = tokenizer("world-student")
    model = tiny_model("student", 0)
    question = prompts(1)[0]
    conversation = (Turn("system", "Be brief."), Turn("user", "reverse: ab"))
    conversation += (Turn("assistant", "ba"), Turn("user", question))
    asked = [conversation, question, PlainText(question)]
    drawn = _sample(model, tok, asked)
    messages = [{"role": t.role, "content": t.content} for t in conversation]
    want = tok.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert drawn.rows[0].prompt_ids == want
    assert [r.prompt_ids for r in drawn.rows[:3]] == encode_prompts(tok, asked, "student")
    assert len({tuple(r.prompt_ids) for r in drawn.rows[:3]}) == 3
    one_by_one = _sample(model, tok, asked, batch_size=1)
    assert [r.sampled for r in one_by_one.rows] == [r.sampled for r in drawn.rows]
