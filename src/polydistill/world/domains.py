"""The skills of the specialists world: deterministic generators, fixed splits, exact-match checks.

Each domain turns a seed into prompts and gold answers. Gold answers train the world's teachers and
score every model; they never train a student. A domain has three disjoint splits, fixed by its
seed: training, validation (where a world teacher decides it is done) and held-out (where every
model is scored, and nothing is chosen), so that no accuracy quoted on held-out was picked on it:

- arithmetic: `347+58` -> `405`. Problems are split by a hash of the problem text, so training
  draws from an effectively unlimited stream that never contains a held-out problem.
- facts: questions about an invented knowledge base (`Where does Tavren Okalo live?` ->
  `Quenbrook`). A fact cannot be inferred from other facts, so the split is by *phrasing*: every
  fact is asked in training through two of its four question templates, held out through a
  third and validated through the fourth. Which template goes where is drawn per fact, so every
  template is trained on for some facts, and validation is as hard as held-out.
- strings: `reverse: kfzq` -> `qzfk`, character-level work across tokens. Split by hash like
  arithmetic.
"""

import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from polydistill.errors import UserError

DOMAINS = ("arithmetic", "facts", "strings")


@dataclass(frozen=True)
class Example:
    domain: str
    prompt: str
    answer: str


class Splits(NamedTuple):
    train: list[Example]
    heldout: list[Example]
    validation: list[Example]


def _is_heldout(text: str, seed: int, heldout_percent: int) -> bool:
    digest = hashlib.blake2b(f"{seed}:{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 100 < heldout_percent


def _hash_split(
    draw: Callable[[random.Random], Example], seed: int, train: int, heldout: int, validation: int
) -> Splits:
    """Draw until every split is full; whether a problem is trained on depends only on its text.

    Problems outside training fill held-out first and validation after it, so a held-out split
    is the same whatever the validation size.
    """
    rng = random.Random(seed)
    splits = Splits([], [], [])
    sizes = Splits(train, heldout, validation)
    seen: set[str] = set()
    for _ in range(50 * sum(sizes) + 1000):
        if all(len(split) >= size for split, size in zip(splits, sizes, strict=True)):
            break
        example = draw(rng)
        if example.prompt in seen:
            continue
        seen.add(example.prompt)
        if not _is_heldout(example.prompt, seed, 10):
            if len(splits.train) < train:
                splits.train.append(example)
        elif len(splits.heldout) < heldout:
            splits.heldout.append(example)
        elif len(splits.validation) < validation:
            splits.validation.append(example)
    if any(len(split) < size for split, size in zip(splits, sizes, strict=True)):
        raise UserError(
            f"world: the domain's problem space is too small for {train} train, {heldout} "
            f"held-out and {validation} validation examples; raise its size (digits or "
            "string length)"
        )
    return splits


def _number(rng: random.Random, min_digits: int, max_digits: int) -> int:
    digits = rng.randint(min_digits, max_digits)
    return rng.randrange(10 ** (digits - 1) if digits > 1 else 0, 10**digits)


def arithmetic(
    seed: int,
    train: int,
    heldout: int,
    max_digits: int,
    min_digits: int = 1,
    max_digits_second: int | None = None,
    validation: int = 200,
) -> Splits:
    """Addition `a+b`: a of min_digits..max_digits digits, b up to max_digits_second digits."""
    second = max_digits_second or max_digits

    def draw(rng: random.Random) -> Example:
        a = _number(rng, min_digits, max_digits)
        b = _number(rng, min(min_digits, second), second)
        return Example("arithmetic", f"{a}+{b}", str(a + b))

    return _hash_split(draw, seed, train, heldout, validation)


def strings(
    seed: int,
    train: int,
    heldout: int,
    min_len: int,
    max_len: int,
    alphabet: str,
    validation: int = 200,
) -> Splits:
    """Reversal of a random word over `alphabet`."""

    def draw(rng: random.Random) -> Example:
        word = "".join(rng.choice(alphabet) for _ in range(rng.randint(min_len, max_len)))
        return Example("strings", f"reverse: {word}", word[::-1])

    return _hash_split(draw, seed, train, heldout, validation)


_SYLLABLES = [c + v for c in "bdfgklmnprstvzq" for v in "aeiou"] + ["th", "sh", "ar", "el", "or"]
_FACT_TEMPLATES = {
    "city": [
        "Where does {name} live?",
        "Which city is home to {name}?",
        "{name} lives in",
        "In which city does {name} live?",
    ],
    "job": [
        "What does {name} do?",
        "What is the job of {name}?",
        "{name} works as a",
        "What is {name}'s trade?",
    ],
    "pet": [
        "Which pet does {name} keep?",
        "What animal lives with {name}?",
        "{name} owns a",
        "What pet does {name} have?",
    ],
}
_PETS = ["otter", "heron", "lynx", "newt", "gecko", "badger", "crane", "ferret", "ibis", "vole"]


def _invent(rng: random.Random, syllables: tuple[int, int]) -> str:
    word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(*syllables)))
    return word.capitalize()


def knowledge_base(seed: int, entities: int) -> dict[str, dict[str, str]]:
    """name -> {attribute: value}; names, cities and jobs are invented words."""
    rng = random.Random(seed)
    cities = sorted(
        {_invent(rng, (2, 3)) + rng.choice(["brook", "fall", "holm", "ton"]) for _ in range(12)}
    )
    jobs = sorted(
        {
            _invent(rng, (2, 2)).lower() + rng.choice(["smith", "wright", "keeper"])
            for _ in range(10)
        }
    )
    kb: dict[str, dict[str, str]] = {}
    while len(kb) < entities:
        name = f"{_invent(rng, (2, 3))} {_invent(rng, (2, 3))}"
        kb.setdefault(
            name, {"city": rng.choice(cities), "job": rng.choice(jobs), "pet": rng.choice(_PETS)}
        )
    return kb


def facts(seed: int, entities: int) -> Splits:
    """Every fact through two templates in training, one held out and one for validation."""
    kb = knowledge_base(seed, entities)
    rng = random.Random(seed + 1)
    splits = Splits([], [], [])
    for name, attributes in kb.items():
        for attribute, value in attributes.items():
            templates = _FACT_TEMPLATES[attribute]
            held, validation = rng.sample(range(len(templates)), 2)
            destination = {held: splits.heldout, validation: splits.validation}
            for index, template in enumerate(templates):
                example = Example("facts", template.format(name=name), value)
                destination.get(index, splits.train).append(example)
    return splits


def check(example: Example, completion: str) -> bool:
    """Exact match after trimming surrounding whitespace."""
    return completion.strip() == example.answer


def cycle(examples: list[Example], seed: int) -> Iterator[Example]:
    """Endless shuffled passes over a split, reproducible from the seed."""
    rng = random.Random(seed)
    order = list(examples)
    while True:
        rng.shuffle(order)
        yield from order
