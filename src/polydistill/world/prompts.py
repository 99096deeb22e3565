"""The specialists world as a prompt source: its domains' examples as `PromptRecord`s.

Each example becomes a one-user-turn chat prompt (layout `prompt`) with its gold answer as the
reference and its domain as the tag; the world's splits map train -> train, validation ->
validation, held-out -> test. So the product path reads world prompts and users' prompts alike.
"""

from collections.abc import Iterator, Mapping

from polydistill.data.records import PromptRecord, Split, Turn, make_record, normalise
from polydistill.world.domains import Example, Splits

_SPLITS: dict[str, Split] = {"train": "train", "validation": "validation", "heldout": "test"}


def world_prompts(splits: Mapping[str, Splits]) -> Iterator[PromptRecord]:
    """Every example of every domain (`domain_splits` of a world config), tagged by domain."""
    for domain, domain_splits in splits.items():
        for name, split in _SPLITS.items():
            for example in getattr(domain_splits, name):
                yield example_record(example, split, origin=f"world {domain} {name}")


def example_record(example: Example, split: Split, origin: str = "") -> PromptRecord:
    """One world example as a record: its prompt as one user turn, its answer the reference."""
    return make_record(
        split,
        "prompt",
        messages=(Turn("user", normalise(example.prompt)),),
        reference=example.answer,
        tag=example.domain,
        origin=origin,
    )
