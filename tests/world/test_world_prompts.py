"""The world as a prompt source: its domains' examples as PromptRecords tagged by domain."""

from polydistill.data.records import Turn
from polydistill.world import domains
from polydistill.world.prompts import world_prompts


def test_world_examples_become_records_with_their_domain_split_and_answer():
    splits = {
        "arithmetic": domains.arithmetic(3, 50, 10, 2, validation=5),
        "strings": domains.strings(3, 40, 8, 3, 5, "abcdefgh", validation=4),
    }
    records = list(world_prompts(splits))
    assert len(records) == 50 + 10 + 5 + 40 + 8 + 4
    first = records[0]
    example = splits["arithmetic"].train[0]
    assert (first.messages, first.reference, first.tag, first.split, first.layout) == (
        (Turn("user", example.prompt),),
        example.answer,
        "arithmetic",
        "train",
        "prompt",
    )
    counts = {(r.tag, r.split): 0 for r in records}
    for r in records:
        counts[r.tag, r.split] += 1
    assert counts == {
        ("arithmetic", "train"): 50,
        ("arithmetic", "validation"): 5,
        ("arithmetic", "test"): 10,
        ("strings", "train"): 40,
        ("strings", "validation"): 4,
        ("strings", "test"): 8,
    }
    assert len({r.id for r in records}) == len(records)
    assert list(world_prompts(splits)) == records
