"""The facts about a teacher that decide whether a student may learn from it: family, publisher,
origin jurisdiction, licence and what the licence asks of a distilled model.

    facts = teacher_facts(teacher_config)   # reads files only, never the weights

Where each fact comes from, first found wins:
1. the run config's `teachers[i].licence` (id, publisher, origin, or a whole licence);
2. the checkpoint (`path`; a served teacher: its tokenizer folder, `served.tokenizer`, where the
   model's card and licence files travel with the tokenizer): its model card's front matter
   (`README.md`: `license`, `license_name`, `license_link`) and its `LICENSE` / `NOTICE` files,
   matched against `licences.LICENCES`; a GGUF file's `general.license` metadata, and those
   files beside it;
3. for a world teacher (neither `path` nor `served`), its family's facts (`licences.FAMILIES`):
   it stands in for that family's checkpoints. Publisher and origin of a real checkpoint or
   served model come from its family too.
A real checkpoint or served model whose licence none of these determines, or whose files name
two licences, is refused with a one-line error unless the config declares it.
"""

from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from polydistill.config import TeacherConfig
from polydistill.errors import UserError
from polydistill.lineage.licences import FAMILIES, LICENCES, Licence, licence_id, licences_in_text

LICENCE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "NOTICE", "NOTICE.txt", "NOTICE.md")


@dataclass(frozen=True)
class TeacherFacts:
    name: str
    family: str
    publisher: str
    origin: str
    licence: Licence
    licence_source: str  # where the licence was read: "config", "README.md", "LICENSE", ...


def model_card_front_matter(path: Path) -> dict:
    """The YAML front matter of a Hugging Face model card (`README.md`), or {}."""
    card = path / "README.md"
    if not card.is_file():
        return {}
    text = card.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    try:
        data = yaml.safe_load(text[3:end]) if end > 0 else None
    except yaml.YAMLError as error:
        raise UserError(f"model card {card}: front matter is not valid YAML: {error}") from error
    return data if isinstance(data, dict) else {}


def gguf_licence(path: Path) -> str | None:
    """The `general.license` metadata of a GGUF file, or None."""
    try:
        from gguf import GGUFReader
    except ImportError as error:
        raise UserError(f"{path}: reading a GGUF file needs `pip install gguf`") from error
    try:
        field = GGUFReader(path).fields.get("general.license")
    except (ValueError, OSError) as error:
        raise UserError(f"{path}: not a readable GGUF file ({error})") from error
    return str(field.contents()) if field is not None else None


def checkpoint_licences(path: Path) -> dict[str, str | None]:
    """Each file of the checkpoint that speaks of a licence -> the known licence id it names
    (None where it names one that is not in the table)."""
    found: dict[str, str | None] = {}
    if path.is_file():  # a GGUF file: its metadata, then the files of its folder
        named = gguf_licence(path)
        if named is not None:
            found[f"{path.name} metadata"] = licence_id(named)
        path = path.parent
    card = model_card_front_matter(path)
    if card.get("license"):
        named = str(card["license"])
        if named.lower() == "other":  # the Hub's spelling of a licence it has no id for
            named = str(card.get("license_name") or card.get("license_link") or "other")
        found["README.md"] = licence_id(named)
    for name in LICENCE_FILES:
        if (path / name).is_file():
            ids = licences_in_text((path / name).read_text(encoding="utf-8", errors="replace"))
            if len(ids) > 1:
                raise UserError(f"{path / name} names two licences: {', '.join(sorted(ids))}")
            found[name] = next(iter(ids), None)
    return found


def declared_licence(teacher: TeacherConfig) -> Licence | None:
    """The licence the config declares for `teacher`, completed from the table."""
    declared = teacher.licence
    if declared is None or declared.id is None:
        return None
    known = LICENCES.get(declared.id)
    fields = declared.model_dump(exclude={"id", "publisher", "origin"}, exclude_none=True)
    if known is None:
        missing = [f for f in ("url", "commercial") if f not in fields]
        if missing:
            raise UserError(
                f"teacher {teacher.name!r}: licence {declared.id!r} is not a known one "
                f"({', '.join(LICENCES)}); describe it in teachers[].licence ({', '.join(missing)})"
            )
        return Licence(id=declared.id, name=fields.pop("name", declared.id), **fields)
    return replace(known, **fields)


def teacher_licence(teacher: TeacherConfig) -> tuple[Licence, str]:
    """The teacher's licence and where it was read; a one-line error if undetermined."""
    declared = declared_licence(teacher)
    if declared is not None:
        return declared, "config"
    if teacher.kind == "world":
        return LICENCES[FAMILIES[teacher.family][1]], f"world stand-in for {teacher.family}"
    files = teacher.path if teacher.kind == "path" else teacher.served.tokenizer
    found = checkpoint_licences(files)
    known = {source: lid for source, lid in found.items() if lid is not None}
    if len(set(known.values())) > 1:
        said = ", ".join(f"{source} says {lid}" for source, lid in known.items())
        raise UserError(
            f"teacher {teacher.name!r}: its {_files_are(teacher)} names two licences ({said}); "
            f"declare one in teachers[].licence.id"
        )
    if not known:
        seen = f" (it mentions one not in the table: {', '.join(found)})" if found else ""
        raise UserError(
            f"teacher {teacher.name!r}: cannot determine the licence of {files}{seen}; "
            f"declare it in teachers[].licence.id (known: {', '.join(LICENCES)})"
        )
    source, lid = next(iter(known.items()))
    return LICENCES[lid], source


def _files_are(teacher: TeacherConfig) -> str:
    return "checkpoint" if teacher.kind == "path" else "served model's tokenizer folder"


def teacher_facts(teacher: TeacherConfig) -> TeacherFacts:
    """Everything a policy asks about `teacher`, read from the config and checkpoint files."""
    licence, source = teacher_licence(teacher)
    publisher = FAMILIES[teacher.family][0]
    declared = teacher.licence
    return TeacherFacts(
        name=teacher.name,
        family=teacher.family,
        publisher=(declared and declared.publisher) or publisher.name,
        origin=(declared and declared.origin) or publisher.origin,
        licence=licence,
        licence_source=source,
    )
