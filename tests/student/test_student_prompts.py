"""The student stage's prompts from records (`student.prompts.prompt_sets`), without models."""

from pathlib import Path

import pytest

from polydistill.chat import PlainText
from polydistill.config import load_config
from polydistill.data import PromptRecord
from polydistill.data.records import Turn, make_record
from polydistill.errors import UserError
from polydistill.student.prompts import UNTAGGED, as_prompts, prompt_sets

TINY = Path(__file__).parents[1] / "tiny.yaml"


def record(split, prompt, tag, reference="gold") -> PromptRecord:
    return make_record(
        split, "prompt", messages=(Turn("user", prompt),), reference=reference, tag=tag,
        origin=f"{split} {prompt}",
    )  # fmt: skip


@pytest.fixture
def files_config(tmp_path):
    """The tiny config with a student and prompt files (whose contents these tests bypass)."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("{}\n")
    return lambda *more: load_config(
        TINY, ["student={teachers: [gemma, qwen]}", f"data={{train: {prompts}}}", *more]
    )


RECORDS = [
    record("train", "a1", "a"),
    record("test", "ta", "a", "x"),
    record("train", "b1", "b"),
    record("validation", "vb", "b"),
    record("train", "a2", "a"),
    record("validation", "va", "a"),
    record("train", "u1", None),
    record("test", "tb", "b", "y"),
]


def test_prompts_by_split_and_tag_in_order(files_config):
    sets = prompt_sets(files_config(), RECORDS)
    assert sets.tags == ["a", "b", UNTAGGED]
    assert sets.train.texts == ["a1", "a2", "b1", "u1"]
    assert sets.train.tags == ["a", "a", "b", UNTAGGED]
    assert [r.messages[0].content for r in sets.validation] == ["va", "vb"]  # tag after tag
    assert {tag: [r.reference for r in rs] for tag, rs in sets.heldout.items()} == {
        "a": ["x"],
        "b": ["y"],
    }
    assert as_prompts(sets.validation).texts == ["va", "vb"]


def test_counts_per_tag_cap_or_repeat_and_only_the_students_tags_train(files_config):
    cfg = files_config("student.tags=[b, a]", "student.prompts_per_tag={a: 1, b: 3}")
    sets = prompt_sets(cfg, RECORDS)
    assert sets.train.texts == ["b1", "b1", "b1", "a1"]
    assert [r.messages[0].content for r in sets.validation] == ["vb", "va"]
    assert set(sets.heldout) == {"a", "b"}  # every test tag is scored, the student's or not
    capped = prompt_sets(files_config("eval.heldout_limit=1"), [*RECORDS, record("test", "t", "a")])
    assert [len(v) for v in capped.heldout.values()] == [1, 1]


def test_a_test_prompt_without_reference_is_one_line(files_config):
    with pytest.raises(UserError) as error:
        prompt_sets(files_config(), [*RECORDS, record("test", "t", "a", None)])
    assert str(error.value).startswith("test t: a test prompt needs a reference answer")
    assert "\n" not in str(error.value)


def test_every_layout_trains_as_its_whole_prompt(files_config):
    """A text row is completion-style text, a conversation keeps every turn, one user turn is
    its string: what each model renders its own way (`chat.encode_prompts`)."""
    conversation = (Turn("system", "be brief"), Turn("user", "hi"), Turn("assistant", "yo"))
    conversation += (Turn("user", "and?"),)
    extra = [
        make_record("train", "text", text="once upon", tag="c", origin="row 3"),
        make_record("train", "messages", messages=conversation, tag="c", origin="row 4"),
        make_record("train", "messages", messages=(Turn("user", "solo"),), tag="c"),
    ]
    sets = prompt_sets(files_config("student.tags=[c]"), [*RECORDS, *extra])
    assert sets.train.texts == [PlainText("once upon"), conversation, "solo"]
