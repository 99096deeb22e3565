"""The layout `serve/__init__.py` and docs/ARCHITECTURE.md state, checked on the source: a
folder per route with its router, protocol and serving modules; `core/`, `engines/` and
`metering/` never import a route or the app; `serve` imports nothing of polydistill but
itself, `errors` and `lineage`; and no two serve modules import each other."""

import ast
from pathlib import Path

import polydistill.serve

SERVE = Path(polydistill.serve.__file__).parent
ROUTES = ("chat", "completions", "models", "tokenizer")


def _imports(path: Path) -> set[str]:
    """The polydistill modules `path` imports, at any depth (lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            found |= {n for n in [node.module, *names] if n.startswith("polydistill")}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("polydistill")}
    return found


def _module(path: Path) -> str:
    parts = path.relative_to(SERVE.parent.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(path): _imports(path) for path in SERVE.rglob("*.py")}


def test_a_folder_per_route() -> None:
    for route in ROUTES:
        for part in ("router", "protocol", "serving"):
            assert f"polydistill.serve.routes.{route}.{part}" in MODULES, (route, part)


def test_serve_imports_only_itself_errors_and_lineage() -> None:
    allowed = ("polydistill.serve", "polydistill.errors", "polydistill.lineage")
    for module, imported in MODULES.items():
        outside = {i for i in imported if not i.startswith(allowed)}
        assert not outside, (module, outside)


def test_shared_code_never_imports_a_route_or_the_app() -> None:
    above = ("polydistill.serve.routes", "polydistill.serve.app", "polydistill.serve.fast_path")
    for module, imported in MODULES.items():
        if module.startswith(("polydistill.serve.core", "polydistill.serve.engines",
                              "polydistill.serve.metering")):  # fmt: skip
            assert not {i for i in imported if i.startswith(above)}, module


def test_no_two_serve_modules_import_each_other() -> None:
    def imports(a: str, b: str) -> bool:
        return any(i == b or i.startswith(b + ".") for i in MODULES[a])

    pairs = [(a, b) for a in MODULES for b in MODULES if a < b and imports(a, b) and imports(b, a)]
    pairs = [(a, b) for a, b in pairs if not b.startswith(a + ".")]  # a package and its module
    assert not pairs, pairs
