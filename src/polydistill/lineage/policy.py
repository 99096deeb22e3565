"""A policy says which teachers a student may learn from; it is checked before any teacher is
loaded, called or read from a store.

A policy file (YAML; unknown fields are errors)::

    name: gov                      # shown in the lineage and in errors
    deny:                          # a teacher matching any listed value is refused
      origin: [CN]
    allow:                         # if given, a teacher must match every listed field
      licence: [apache-2.0, gemma]
    obligations: [notice, use_restrictions]   # the duties accepted; a licence asking another
                                              # (naming) is refused. Omitted: all accepted
    commercial: true               # every teacher's licence must allow commercial use
    on_violation: exclude          # refuse (the run stops, naming teacher and rule) or
                                   # exclude (the student learns without that teacher)

    gate = policy_gate(cfg, load_policy(path))   # facts of every teacher, verdicts
    cfg = gate.config                            # the student's teachers, less the excluded

The rules and their evaluation on plain facts are `lineage.rules` (the gateway checks keys'
policies with them). Match values compare case-insensitively; `origin` is an ISO 3166-1
alpha-2 code, `licence` a licence id (`licences.LICENCES`), `family` a family name,
`publisher` the publisher's name.
"""

from dataclasses import dataclass

from polydistill.config import RunConfig
from polydistill.errors import UserError
from polydistill.lineage.facts import TeacherFacts, teacher_facts
from polydistill.lineage.rules import FIELDS, Obligation, Policy, Rules, broken_rule, load_policy

__all__ = [
    "FIELDS", "Gate", "Obligation", "Policy", "Rules", "load_policy", "policy_gate", "run_gate",
    "violation",
]  # fmt: skip


def violation(facts: TeacherFacts, policy: Policy) -> str | None:
    """The rule `facts` break under `policy` (e.g. "deny.origin lists CN ..."), or None."""
    return broken_rule(
        policy,
        origin=facts.origin,
        publisher=facts.publisher,
        licence=facts.licence.id,
        family=facts.family,
        obligations=facts.licence.obligations,
        commercial=facts.licence.commercial,
    )


@dataclass(frozen=True)
class Gate:
    """A policy applied to a run: each teacher's facts, the excluded ones with the rule."""

    policy: Policy | None
    facts: dict[str, TeacherFacts]
    excluded: dict[str, str]  # teacher name -> the rule it breaks
    config: RunConfig  # the run's config, the excluded teachers taken out of the student's


def run_gate(cfg: RunConfig) -> Gate:
    """The gate of a run: its config's `policy` file (none: every teacher, facts checked)."""
    return policy_gate(cfg, load_policy(cfg.policy) if cfg.policy is not None else None)


def policy_gate(cfg: RunConfig, policy: Policy | None) -> Gate:
    """Check every teacher of `cfg` against `policy` before anything is loaded.

    Under `refuse` the first violation is a `UserError` naming teacher and rule; under
    `exclude` the breaking teachers leave the student's teachers (an error if none is left, or
    if the fusion settings name one)."""
    facts = {t.name: teacher_facts(t) for t in cfg.teachers}
    excluded = {}
    for name, fact in facts.items():
        rule = violation(fact, policy) if policy is not None else None
        if rule is not None:
            excluded[name] = rule
    if excluded and policy is not None and policy.on_violation == "refuse":
        name, rule = next(iter(excluded.items()))
        raise UserError(f"policy {policy.name!r} refuses teacher {name!r}: {rule}")
    return Gate(policy, facts, excluded, _without(cfg, excluded))


def _without(cfg: RunConfig, excluded: dict[str, str]) -> RunConfig:
    student = cfg.student
    if student is None or not excluded.keys() & set(student.teachers):
        return cfg
    kept = [name for name in student.teachers if name not in excluded]
    if not kept:
        raise UserError(
            f"the policy excludes every teacher of the student ({', '.join(student.teachers)})"
        )
    fusion = student.fusion
    named = {**(fusion.weights or {}), **{v: v for v in (fusion.routes or {}).values()}}
    for name in excluded.keys() & set(named):
        raise UserError(
            f"student.fusion names teacher {name!r}, which the policy excludes "
            f"({excluded[name]}); drop it from fusion.weights / fusion.routes"
        )
    return cfg.model_copy(update={"student": student.model_copy(update={"teachers": kept})})
