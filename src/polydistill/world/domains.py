"""The skills of the specialists world: deterministic generators, fixed splits, exact-match checks.

Each domain turns a seed into prompts and gold answers. Gold answers train the world's teachers and
score every model; they never train a student. A domain's held-out split is fixed by its seed and
disjoint from its training split:

- arithmetic: `347+58` -> `405`. Problems are split by a hash of the problem text, so training
  draws from an effectively unlimited stream that never contains a held-out problem.
- facts: questions about an invented knowledge base (`Where does Tavren Okalo live?` ->
  `Quenbrook`). A fact cannot be inferred from other facts, so the split is by *phrasing*: every
  fact is asked in training through some of its question templates, and held out through one
  template that training never uses for that fact.
- strings: `reverse: kfzq` -> `qzfk`, character-level work across tokens. Split by hash like
  arithmetic.
"""

import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from polydistill.errors import UserError

DOMAINS = ("arithmetic", "facts", "strings")


@dataclass(frozen=True)
class Example:
    domain: str
    prompt: str
    answer: str


def _is_heldout(text: str, seed: int, heldout_percent: int) -> bool:
    digest = hashlib.blake2b(f"{seed}:{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 100 < heldout_percent


def _hash_split(
    draw: Callable[[random.Random], Example], seed: int, train: int, heldout: int
) -> tuple[list[Example], list[Example]]:
    """Draw until both splits are full; a problem's split depends only on its text."""
    rng = random.Random(seed)
    train_set: list[Example] = []
    heldout_set: list[Example] = []
    seen: set[str] = set()
    for _ in range(50 * (train + heldout) + 1000):
        if len(train_set) >= train and len(heldout_set) >= heldout:
            break
        example = draw(rng)
        if example.prompt in seen:
            continue
        seen.add(example.prompt)
        target = heldout_set if _is_heldout(example.prompt, seed, 10) else train_set
        limit = heldout if target is heldout_set else train
        if len(target) < limit:
            target.append(example)
    if len(train_set) < train or len(heldout_set) < heldout:
        raise UserError(
            f"world: the domain's problem space is too small for {train} train and "
            f"{heldout} held-out examples; raise its size (digits or string length)"
        )
    return train_set, heldout_set


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
) -> tuple[list, list]:
    """Addition `a+b`: a of min_digits..max_digits digits, b up to max_digits_second digits."""
    second = max_digits_second or max_digits

    def draw(rng: random.Random) -> Example:
        a = _number(rng, min_digits, max_digits)
        b = _number(rng, min(min_digits, second), second)
        return Example("arithmetic", f"{a}+{b}", str(a + b))

    return _hash_split(draw, seed, train, heldout)


def strings(
    seed: int, train: int, heldout: int, min_len: int, max_len: int, alphabet: str
) -> tuple[list, list]:
    """Reversal of a random word over `alphabet`."""

    def draw(rng: random.Random) -> Example:
        word = "".join(rng.choice(alphabet) for _ in range(rng.randint(min_len, max_len)))
        return Example("strings", f"reverse: {word}", word[::-1])

    return _hash_split(draw, seed, train, heldout)


_SYLLABLES = [c + v for c in "bdfgklmnprstvzq" for v in "aeiou"] + ["th", "sh", "ar", "el", "or"]
_FACT_TEMPLATES = {
    "city": ["Where does {name} live?", "Which city is home to {name}?", "{name} lives in"],
    "job": ["What does {name} do?", "What is the job of {name}?", "{name} works as a"],
    "pet": ["Which pet does {name} keep?", "What animal lives with {name}?", "{name} owns a"],
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


def facts(seed: int, entities: int) -> tuple[list, list]:
    """Every fact in training through all templates but one; the remaining template is held out."""
    kb = knowledge_base(seed, entities)
    rng = random.Random(seed + 1)
    train_set: list[Example] = []
    heldout_set: list[Example] = []
    for name, attributes in kb.items():
        for attribute, value in attributes.items():
            templates = _FACT_TEMPLATES[attribute]
            held = rng.randrange(len(templates))
            for index, template in enumerate(templates):
                example = Example("facts", template.format(name=name), value)
                (heldout_set if index == held else train_set).append(example)
    return train_set, heldout_set


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
