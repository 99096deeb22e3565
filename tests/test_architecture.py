"""The import layers `docs/ARCHITECTURE.md` states hold in `src/polydistill/`.

The document lists the layers low to high in a fenced `layers` block, one layer a line, the
modules of a layer separated by spaces (a package's name covers its submodules unless one of
them is named on its own). A module may import modules of its own layer or below, never above,
at the top of a file or inside a function alike; every named module exists and every module is
named; and the product path (everything below `world`) never imports `polydistill.world`.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SRC = ROOT / "src" / "polydistill"
DOC = ROOT / "docs" / "ARCHITECTURE.md"


def stated_layers(text: str) -> list[list[str]]:
    """The layers of the document's ```layers block, low to high."""
    found = re.search(r"```layers\n(.*?)```", text, re.S)
    assert found, "docs/ARCHITECTURE.md states no ```layers block"
    return [line.split() for line in found.group(1).splitlines() if line.strip()]


def modules(src: Path) -> dict[str, Path]:
    """Every module under `src` by dotted name below `polydistill` (a package's `__init__` as
    the package; the root package's as `__init__`)."""
    found = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imported(path: Path, known: set[str]) -> set[str]:
    """The `polydistill` modules a file imports anywhere in it (function bodies too), by the
    dotted name below `polydistill`; `from polydistill.x import y` is `x.y` when that is a
    module, else `x`."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            targets = [f"{node.module}.{a.name}" for a in node.names]
            targets = [
                t if t.removeprefix("polydistill.") in known else node.module for t in targets
            ]
        else:
            continue
        for target in targets:
            if target == "polydistill" or not target.startswith("polydistill."):
                continue
            names.add(target.removeprefix("polydistill."))
    return names


def layer_of(module: str, index: dict[str, int]) -> int | None:
    """The layer of the longest named prefix of `module` (None when nothing names it)."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        if name in index:
            return index[name]
    return None


def violations(layers: list[list[str]], src: Path) -> list[str]:
    """Every broken rule, one line each."""
    index = {name: i for i, layer in enumerate(layers) for name in layer}
    found = modules(src)
    problems = [
        f"{name}: named in the layers but no such module"
        for name in index
        if not any(m == name or m.startswith(name + ".") for m in found)
    ]
    for module, path in found.items():
        own = layer_of(module, index)
        if own is None:
            problems.append(f"{module}: in src/ but named in no layer")
            continue
        for target in sorted(imported(path, set(found))):
            theirs = layer_of(target, index)
            if theirs is not None and theirs > own:
                problems.append(f"{module} (layer {own}) imports {target} (layer {theirs})")
    world = index.get("world")
    for module, path in found.items():
        own = layer_of(module, index)
        below = world is not None and own is not None and own < world
        targets = imported(path, set(found))
        if below and any(t == "world" or t.startswith("world.") for t in targets):
            problems.append(f"{module}: the product path imports polydistill.world")
    return problems


def test_the_documented_layers_hold():
    assert violations(stated_layers(DOC.read_text(encoding="utf-8")), SRC) == []


def test_every_module_the_module_table_names_exists():
    """The first column of the document's module table: files (`x.py`) and packages (`x/`)."""
    text = DOC.read_text(encoding="utf-8")
    table = text[text.index("## Modules") :].split("\n## ", 1)[0]
    named = re.findall(r"^\| `([^`]+)` \|", table, re.M)
    assert len(named) > 20
    assert [name for name in named if not (SRC / name).exists()] == []


def test_the_product_path_sits_below_the_world():
    layers = stated_layers(DOC.read_text(encoding="utf-8"))
    index = {name: i for i, layer in enumerate(layers) for name in layer}
    for name in ("config", "data", "inputs", "student", "evaluate", "pipeline"):
        assert index[name] < index["world"], name


def write(root: Path, name: str, text: str) -> None:
    path = root / (name.replace(".", "/") + ".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("low", "from polydistill.high import x\n", "low (layer 0) imports high (layer 1)"),
        (
            "low",
            "def f():\n    import polydistill.high.deep\n",
            "low (layer 0) imports high.deep (layer 1)",
        ),
        (
            "low",
            "from polydistill import world\n",
            "low: the product path imports polydistill.world",
        ),
    ],
)
def test_a_real_violation_is_found(tmp_path, module, source, expected):
    """Synthetic packages: an upward import (at the top, inside a function), a world import."""
    src = tmp_path / "polydistill"
    for name in ("low", "high.deep", "world"):
        write(src, name, "")
    write(src, "high.__init__", "")
    write(src, module, source)
    problems = violations([["low"], ["high"], ["world"]], src)
    assert any(p.startswith(expected) for p in problems), problems


def test_unnamed_and_missing_modules_are_found(tmp_path):
    src = tmp_path / "polydistill"
    write(src, "low", "")
    write(src, "stray", "")
    problems = violations([["low", "gone"]], src)
    assert "gone: named in the layers but no such module" in problems
    assert "stray: in src/ but named in no layer" in problems
