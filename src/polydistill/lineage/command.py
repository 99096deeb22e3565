"""`polydistill policy check` and `polydistill lineage verify | keygen`.

    polydistill policy check CONFIG [--policy P]     # the policy gate as a dry run
    polydistill lineage verify DIR [--public-key K]  # a student's signed lineage, offline
    polydistill lineage keygen --out KEY.pem         # a signing key (POLYDISTILL_LINEAGE_KEY)

`policy check` prints, for every teacher of the config, the facts the policy reads (family,
publisher, origin, licence and where it was read, the licence's obligations) and the verdict;
nothing is loaded.
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


def student_folder(path: Path) -> Path:
    """A student checkpoint folder, or the `student/` of a run folder."""
    return path / "student" if (path / "student" / "lineage.json").is_file() else path


def register(app: typer.Typer) -> None:
    """Add `policy check` and `lineage verify | keygen` to the CLI."""
    lineage_app = typer.Typer(help="A student's signed lineage.", no_args_is_help=True)
    app.add_typer(lineage_app, name="lineage")

    @lineage_app.command("verify")
    def verify(
        folder: Annotated[Path, typer.Argument(help="A student folder, or a run folder.")],
        public_key: Annotated[
            Path | None, typer.Option("--public-key", help="The signer's public key (PEM).")
        ] = None,
    ) -> None:
        """Check the lineage's signature and that the weights are the signed ones."""
        from polydistill.lineage.signing import verify_lineage

        student = student_folder(folder)
        record = verify_lineage(student, public_key)
        how = "pinned key" if public_key else f"{record['signature']['key']} key, not pinned"
        typer.echo(f"{student}: signature valid ({how}); weights match")
        for teacher in record["teachers"]:
            typer.echo(f"  {teacher['name']}: share {teacher['share']:.3f}")
        for excluded in record.get("excluded", []):
            typer.echo(f"  {excluded['name']}: excluded ({excluded['rule']}), share 0")

    @lineage_app.command("keygen")
    def keygen(
        out: Annotated[Path, typer.Option("--out", help="Private key file to write (PEM).")],
    ) -> None:
        """Write an ed25519 signing key and its public half (OUT.pub.pem)."""
        from polydistill.lineage.signing import write_keypair

        typer.echo(f"wrote {out} (keep it secret) and {write_keypair(out)}")

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
