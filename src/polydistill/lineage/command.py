"""`polydistill policy check CONFIG [--policy P]`: the policy gate as a dry run.

Prints, for every teacher of the config, the facts the policy reads (family, publisher, origin,
licence and where it was read, the licence's obligations) and the verdict; nothing is loaded.
Exit 0 when the run would go ahead (excluded teachers are listed), 2 with a one-line error when
it would be refused.
"""

from pathlib import Path
from typing import Annotated

import typer

from polydistill.config import RunConfig


def verdict_lines(cfg: RunConfig) -> list[str]:
    """One line per teacher: its facts and whether the run's policy lets the student learn
    from it (raises the run's own `UserError` where the policy refuses the run)."""
    from polydistill.lineage.policy import run_gate

    gate = run_gate(cfg)
    student = set(cfg.student.teachers) if cfg.student else set()
    lines = []
    for name, facts in gate.facts.items():
        licence = facts.licence
        duties = ", ".join(licence.obligations) or "none"
        if name in gate.excluded:
            verdict = f"excluded: {gate.excluded[name]}"
        else:
            verdict = "allowed" + (
                "" if name in student or not student else " (not a teacher of the student)"
            )
        lines.append(
            f"{name}: {facts.family}, {facts.publisher} ({facts.origin}), licence {licence.id} "
            f"(from {facts.licence_source}; obligations: {duties}; "
            f"commercial: {'yes' if licence.commercial else 'no'}) -> {verdict}"
        )
    return lines


def register(app: typer.Typer) -> None:
    """Add `policy check` to the CLI."""
    policy_app = typer.Typer(help="The teacher policy gate.", no_args_is_help=True)
    app.add_typer(policy_app, name="policy")

    @policy_app.command("check")
    def check(
        config: Annotated[Path, typer.Argument(help="Run configuration (YAML).")],
        overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides.")] = None,
        policy: Annotated[
            Path | None, typer.Option("--policy", help="Policy file (else the config's policy).")
        ] = None,
    ) -> None:
        """Check every teacher of CONFIG against a policy, loading nothing."""
        from polydistill.config import load_config

        extra = [f"policy={policy}"] if policy is not None else []
        cfg = load_config(config, [*(overrides or []), *extra])
        for line in verdict_lines(cfg):
            typer.echo(line)
