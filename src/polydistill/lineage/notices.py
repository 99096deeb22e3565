"""What a distilled student owes its teachers, in the two files that travel with it: `NOTICE`
(every notice, naming rule and use policy its teachers' licences require) and a Hugging Face
model card (`README.md`, with `base_model` naming the teachers; the Hub has no
`base_model_relation` for distillation, so the card says it in words)."""

from typing import Any

import yaml


def notice_text(record: dict[str, Any]) -> str:
    """The NOTICE file of a student: one section per teacher whose licence asks something."""
    lines = [
        f"{record['student']}: a model distilled by polydistill from "
        f"{', '.join(t['name'] for t in record['teachers'])}.",
        "",
    ]
    owed = False
    for teacher in record["teachers"]:
        licence = teacher["licence"]
        duties = []
        if licence["notice"]:
            duties.append(licence["notice"])
        if licence["naming"]:
            duties.append(f"Naming: {licence['naming']}.")
        if licence["use_restrictions"]:
            duties.append(
                "Use restrictions to pass on to every user: " + str(licence["use_restrictions"])
            )
        if licence["commercial_limit"]:
            duties.append(f"Commercial use: {licence['commercial_limit']}.")
        if duties:
            owed = True
            lines += [f"Teacher {teacher['name']} ({licence['name']}, {licence['url']}):"]
            lines += [f"  {duty}" for duty in duties] + [""]
    if not owed:
        lines.append("No teacher's licence asks for a notice, a naming rule or a use policy.")
    return "\n".join(lines).rstrip("\n") + "\n"


def model_card_text(record: dict[str, Any], accuracy: dict[str, float] | None = None) -> str:
    """A Hugging Face model card for the student (front matter + what it was distilled from)."""
    front = {
        "base_model": [t["name"] for t in record["teachers"]],
        "license": "other",
        "license_name": "proprietary",
        "tags": ["distillation", "polydistill"],
        "pipeline_tag": "text-generation",
    }
    rows = [
        f"| {t['name']} | {t['family']} | {t['publisher']} ({t['origin']}) | "
        f"{t['licence']['id']} | {t['share']:.3f} |"
        for t in record["teachers"]
    ]
    parts = [
        "---",
        yaml.safe_dump(front, sort_keys=False).rstrip("\n"),
        "---",
        f"# {record['student']}",
        "",
        "Distilled (not fine-tuned) from several teachers by polydistill: the teachers' "
        "distributions were projected into this model's vocabulary and fused. `lineage.json` "
        "holds the signed record; `bom.cdx.json` the CycloneDX ML-BOM.",
        "",
        "| teacher | family | publisher | licence | share of fused mass |",
        "| --- | --- | --- | --- | ---: |",
        *rows,
    ]
    for excluded in record["excluded"]:
        parts.append(f"\nExcluded by policy: {excluded['name']} ({excluded['rule']}), share 0.")
    if accuracy:
        scores = ", ".join(f"{tag} {value:.3f}" for tag, value in sorted(accuracy.items()))
        parts += ["", f"Held-out exact match: {scores}."]
    parts += ["", "## Notices", "", "```", notice_text(record).rstrip("\n"), "```", ""]
    return "\n".join(parts)
