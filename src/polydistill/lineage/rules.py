"""A policy's rules and their evaluation on plain teacher facts: no run config, no checkpoint.

    policy = load_policy(Path("gov.yaml"))          # one-line UserError on any mistake
    rule = broken_rule(policy, origin="CN", publisher="Alibaba Cloud", licence="apache-2.0",
                       family="qwen", obligations=[], commercial=True)
    # "deny.origin lists CN (origin of the teacher)", or None

`lineage.policy` applies it to a run's teachers before anything is loaded; the gateway
(`serve.core.access`) applies it to the teachers a served model's signed lineage records.
The file format is documented in `lineage.policy`.
"""

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from polydistill.errors import UserError

Obligation = Literal["notice", "naming", "use_restrictions"]
FIELDS = ("origin", "publisher", "licence", "family")


class Rules(BaseModel):
    """Values per teacher fact; a field left out matches nothing (deny) or anything (allow)."""

    model_config = ConfigDict(extra="forbid")
    origin: list[str] | None = None
    publisher: list[str] | None = None
    licence: list[str] | None = None
    family: list[str] | None = None


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "policy"
    deny: Rules = Rules()
    allow: Rules | None = None
    obligations: list[Obligation] | None = None
    commercial: bool = False
    on_violation: Literal["refuse", "exclude"] = "refuse"

    @property
    def digest(self) -> str:
        """The policy's identity: a store captured under it records this."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


def parse_policy(raw: object, where: str) -> Policy:
    """Check an already parsed policy document; `where` names it in the one-line error."""
    try:
        return Policy.model_validate(raw if raw is not None else {})
    except ValidationError as error:
        problem = error.errors()[0]
        field = ".".join(str(part) for part in problem["loc"]) or "(top)"
        raise UserError(f"{where}: {field}: {problem['msg']}") from error


def load_policy(path: Path) -> Policy:
    """Read and check a policy file; every mistake is a one-line `UserError`."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise UserError(f"policy file {path}: not found") from error
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        first = str(error).splitlines()[0]
        raise UserError(f"policy file {path}: not valid YAML ({first})") from error
    return parse_policy(raw, f"policy file {path}")


def broken_rule(
    policy: Policy,
    *,
    origin: str,
    publisher: str,
    licence: str,
    family: str,
    obligations: Sequence[str],
    commercial: bool,
) -> str | None:
    """The rule a teacher with these facts breaks under `policy` (e.g. "deny.origin lists
    CN (origin of the teacher)"), or None."""
    values = {"origin": origin, "publisher": publisher, "licence": licence, "family": family}
    for field in FIELDS:
        value = values[field]
        denied = getattr(policy.deny, field)
        if denied and value.lower() in {v.lower() for v in denied}:
            return f"deny.{field} lists {value} ({field} of the teacher)"
        allowed = getattr(policy.allow, field) if policy.allow else None
        if allowed is not None and value.lower() not in {v.lower() for v in allowed}:
            return f"allow.{field} does not list {value} ({field} of the teacher)"
    if policy.obligations is not None:
        refused = [o for o in obligations if o not in policy.obligations]
        if refused:
            return f"obligations: {licence} asks {', '.join(refused)}, not accepted"
    if policy.commercial and not commercial:
        return f"commercial: {licence} forbids commercial use"
    return None
