"""The student stage's prompts, read once from the run's prompt records, by split and tag.

    sets = prompt_sets(cfg, records)      # records: any iterable of PromptRecord
    sets.train         # Prompts: what the student trains on (prompts and tags; gold for baselines)
    sets.validation    # records of the validation split, for `student.validate_every`
    sets.heldout       # {tag: [PromptRecord]} of the test split, for evaluation

Training prompts are the `train` split's prompts of the student's tags (default: every tag the
train split has), at most `prompts_per_tag` of each (a tag with fewer repeats them, so that its
share of the training is the one configured). Only those are kept while the records stream, so
memory grows with the prompts trained on, not with the prompt set. A record's `reference` is
read only by evaluation, the oracle and the gold-reading fusion baselines, never by the student.

Every layout trains: a record's prompt (`chat.record_prompt`) is its one user turn, its whole
conversation (system and earlier turns) or its completion-style text, and each teacher and the
student render it their own way (`chat`). A conversation for a completion model (no chat
template), or one its template refuses, is a one-line error: naming the record's file and line
when the pipeline's context check reads it through that model, before any model is loaded (the
student and every local teacher whose context is known: `evaluate.prompts.encode_records`),
else naming the record's id when the teacher first renders it.
"""

from collections.abc import Iterable
from dataclasses import dataclass

from polydistill.chat import Prompt, record_prompt
from polydistill.config import RunConfig
from polydistill.data import PromptRecord
from polydistill.errors import UserError

UNTAGGED = "untagged"
"""The tag of a record that has none."""

Pooled = tuple[Prompt, str, str | None]
"""A training prompt as the pools keep it: (prompt, tag, reference), not the whole record."""


@dataclass(frozen=True)
class Prompts:
    texts: list[Prompt]
    """What each model is asked (`chat.Prompt`): one user turn, a whole conversation (system
    and earlier turns included) or completion-style text, each rendered by every model its own
    way (`chat.encode_prompts`)."""
    tags: list[str]
    gold: list[str | None]  # read only by the oracle and the gold-reading fusion baselines


@dataclass(frozen=True)
class PromptSets:
    train: Prompts
    validation: list[PromptRecord]
    """The validation records of the student's tags, tag after tag."""
    heldout: dict[str, list[PromptRecord]]
    tags: list[str]
    """The student's tags, in the order its prompts are laid out."""


def tag_of(record: PromptRecord) -> str:
    return record.tag if record.tag is not None else UNTAGGED


def prompt_sets(cfg: RunConfig, records: Iterable[PromptRecord]) -> PromptSets:
    """The train, validation and held-out prompts of a run, in one pass over `records`."""
    s = cfg.student
    wanted = None if s is None else s.tags
    limit = None if s is None else s.prompts_per_tag
    train: dict[str, list[Pooled]] = {}
    validation: list[PromptRecord] = []
    heldout: dict[str, list[PromptRecord]] = {}
    for record in records:
        tag = tag_of(record)
        if record.split == "test":
            if record.reference is None:  # fail before any model is loaded
                raise UserError(
                    f"{record.origin or record.id}: a test prompt needs a reference answer "
                    "(evaluation grades against it)"
                )
            kept = heldout.setdefault(tag, [])
            if cfg.eval.heldout_limit is None or len(kept) < cfg.eval.heldout_limit:
                kept.append(record)
        elif s is None or (wanted is not None and tag not in wanted):
            continue
        elif record.split == "validation":
            validation.append(record)
        else:
            pool = train.setdefault(tag, [])
            cap = limit.get(tag) if isinstance(limit, dict) else limit
            if cap is None or len(pool) < cap:  # what the student stage reads, not the record
                pool.append((record_prompt(record), tag, record.reference))
    tags = list(wanted) if wanted is not None else sorted(train)
    if s is not None:
        check_tags(cfg, tags, train)
    else:
        validation = []
    validation.sort(key=lambda r: tags.index(tag_of(r)))  # stable: file order within a tag
    return PromptSets(_training(tags, train, limit), validation, heldout, tags)


def check_tags(cfg: RunConfig, tags: list[str], train: dict[str, list]) -> None:
    """Every tag the student's settings name has training prompts; routes cover every tag."""
    s = cfg.student
    named = {"student.tags": tags}
    for field in ("prompts_per_tag", "prompt_loss_weight"):
        if isinstance(getattr(s, field), dict):
            named[f"student.{field}"] = list(getattr(s, field))
    if s.fusion.routes is not None:
        named["student.fusion.routes"] = list(s.fusion.routes)
    if s.curriculum is not None:
        named["student.curriculum.first"] = list(s.curriculum.first)
    for key, names in named.items():
        missing = sorted(set(names) - set(train))
        if missing:
            have = ", ".join(sorted(train)) or "none"
            raise UserError(f"{key}: no training prompts tagged {missing} (tags: {have})")
    if s.fusion.routes is not None and (unrouted := sorted(set(tags) - set(s.fusion.routes))):
        raise UserError(f"student.fusion.routes: no teacher for tag(s) {unrouted}")


def _training(tags: list[str], train: dict[str, list[Pooled]], limit: int | dict | None) -> Prompts:
    chosen: list[Pooled] = []
    for tag in tags:
        pool = train[tag]
        count = limit.get(tag, len(pool)) if isinstance(limit, dict) else limit or len(pool)
        chosen += [pool[i % len(pool)] for i in range(count)]
    texts, kept_tags, gold = zip(*chosen, strict=True) if chosen else ((), (), ())
    return Prompts(list(texts), list(kept_tags), list(gold))


def prompts_slice(prompts: Prompts, start: int, stop: int) -> Prompts:
    """Prompts `start` to `stop` (a chunk of a run's training prompts)."""
    return Prompts(prompts.texts[start:stop], prompts.tags[start:stop], prompts.gold[start:stop])


def as_prompts(records: list[PromptRecord]) -> Prompts:
    return Prompts(
        [record_prompt(r) for r in records],
        [tag_of(r) for r in records],
        [r.reference for r in records],
    )
