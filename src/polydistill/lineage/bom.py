"""The lineage as a CycloneDX 1.6 ML-BOM (`bom.cdx.json`), built with cyclonedx-python-lib.

The student is the BOM's subject (`metadata.component`), a `machine-learning-model` whose
`pedigree.ancestors` are its teachers (each a model component with its publisher, licence,
weights hash and measured share as properties) and whose training prompts are a `data`
component. cyclonedx-python-lib 11 has no model for `modelCard`, so the card (approach, task,
the data set it was trained on, accuracy per tag) is added to the serialised JSON, and the whole
is validated against the 1.6 schema the library ships before it is written.
"""

import json
import re
from typing import Any

from cyclonedx.model import HashAlgorithm, HashType, Property, XsUri
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType, Pedigree
from cyclonedx.model.contact import OrganizationalEntity
from cyclonedx.model.license import DisjunctiveLicense
from cyclonedx.output.json import JsonV1Dot6
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

SPDX = {"apache-2.0": "Apache-2.0", "mit": "MIT", "cc-by-nc-4.0": "CC-BY-NC-4.0"}
SHA256 = re.compile(r"^[0-9a-f]{64}$")
PREFIX = "polydistill:"


def _hashes(*digests: str | None) -> list[HashType]:
    return [
        HashType(alg=HashAlgorithm.SHA_256, content=d) for d in digests if d and SHA256.match(d)
    ]


def _licence(entry: dict[str, Any]) -> DisjunctiveLicense:
    if entry["id"] in SPDX:
        return DisjunctiveLicense(id=SPDX[entry["id"]])
    return DisjunctiveLicense(name=entry["name"], url=XsUri(entry["url"]) if entry["url"] else None)


def _properties(values: dict[str, Any]) -> list[Property]:
    return [
        Property(name=PREFIX + key, value=value if isinstance(value, str) else json.dumps(value))
        for key, value in values.items()
        if value is not None
    ]


def teacher_component(teacher: dict[str, Any]) -> Component:
    facts = {
        "family": teacher["family"],
        "origin": teacher["origin"],
        "share": teacher["share"],
        "mass": teacher["mass"],
        "completions": teacher["completions"],
        "tail": teacher["tail"],
        "licence-obligations": teacher["licence"]["obligations"],
    }
    return Component(
        type=ComponentType.MACHINE_LEARNING_MODEL,
        name=teacher["name"],
        bom_ref=f"teacher:{teacher['name']}",
        publisher=teacher["publisher"],
        supplier=OrganizationalEntity(name=teacher["publisher"]),
        licenses=[_licence(teacher["licence"])],
        hashes=_hashes(teacher["fingerprint"].get("weights")),
        properties=_properties(facts),
    )


def model_card(record: dict[str, Any], accuracy: dict[str, float] | None) -> dict[str, Any]:
    card: dict[str, Any] = {
        "modelParameters": {
            "approach": {"type": "supervised"},
            "task": "text-generation",
            "datasets": [{"ref": "data:prompts"}],
        }
    }
    if accuracy:
        metrics = [
            {"type": "accuracy", "value": f"{value:.4f}", "slice": tag}
            for tag, value in sorted(accuracy.items())
        ]
        card["quantitativeAnalysis"] = {"performanceMetrics": metrics}
    return card


def lineage_bom(record: dict[str, Any], accuracy: dict[str, float] | None = None) -> str:
    """The ML-BOM of a lineage record as JSON text, validated against CycloneDX 1.6."""
    weights = record["weights"]
    student = Component(
        type=ComponentType.MACHINE_LEARNING_MODEL,
        name=record["student"],
        bom_ref="student",
        hashes=_hashes(*weights.values()) if len(weights) == 1 else [],
        pedigree=Pedigree(ancestors=[teacher_component(t) for t in record["teachers"]]),
        properties=_properties(
            {
                "weights": weights,
                "excluded": record["excluded"],
                "policy": record["policy"] and record["policy"]["name"],
                "strategy": record.get("strategy"),
                "config-sha256": record["config"]["sha256"],
            }
        ),
    )
    prompts = record["data"]["prompts"]
    data = Component(
        type=ComponentType.DATA,
        name="prompts",
        bom_ref="data:prompts",
        hashes=_hashes(prompts.get("sha256")),
        properties=_properties({"count": prompts.get("count")}),
    )
    bom = Bom(components=[data])
    bom.metadata.component = student
    bom.register_dependency(student, [data])  # trained on the prompts
    document = json.loads(JsonV1Dot6(bom).output_as_string())
    document["metadata"]["component"]["modelCard"] = model_card(record, accuracy)
    text = json.dumps(document, indent=1)
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    if error is not None:
        raise ValueError(f"the ML-BOM does not validate against CycloneDX 1.6: {error}")
    return text
