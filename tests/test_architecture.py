"""The shape of the code: the import contracts, no import circles, each C extension beside its Python
twin, and a map in docs/architecture.md that names every module of the tree."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

from flowscope.core import speedups

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "flowscope"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTENSIONS = PYPROJECT["tool"]["setuptools"]["ext-modules"]


def circles(graph: grimp.ImportGraph) -> dict[str, tuple[str, ...]]:
    """Each module that imports itself through others, with one such chain."""
    found = {}
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            chain = graph.find_shortest_chain(importer=imported, imported=module)
            if chain:
                found[module] = (module, *chain)
                break
    return found


def test_import_contracts_hold():
    # in a process of its own: import-linter reconfigures logging, which would silence this one's loggers
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


def test_no_module_imports_itself_through_others():
    # imports made only for type checking count too: a circle there is still a circle in the design
    assert circles(grimp.build_graph("flowscope", exclude_type_checking_imports=False)) == {}


def test_circles_are_found():
    graph = grimp.ImportGraph()
    for importer, imported in [("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")]:
        graph.add_import(importer=importer, imported=imported)
    assert circles(graph) == {"p.a": ("p.a", "p.b", "p.c", "p.a"), "p.b": ("p.b", "p.c", "p.a", "p.b"),
                              "p.c": ("p.c", "p.a", "p.b", "p.c")}  # fmt: skip


@pytest.mark.parametrize("extension", EXTENSIONS, ids=[e["name"] for e in EXTENSIONS])
def test_each_c_extension_is_built_beside_its_python_twin(extension):
    name = extension["name"]
    [source] = extension["sources"]
    package, _, module = name.rpartition(".")
    assert Path(source) == Path(*package.split(".")) / f"{module}.c", "the source sits where the module is built"
    assert speedups.built(name) is not None, f"{name} was not compiled; is gcc installed? (make install)"
    twins = [
        path
        for path in (ROOT / Path(source).parent).glob("*.py")
        if f'speedups.built("{name}")' in path.read_text(encoding="utf-8")
    ]
    assert len(twins) == 1, f"exactly one module beside {source} loads it through flowscope.core.speedups"


def listed_in_map() -> set[str]:
    """The files the map's table names, as paths under flowscope/."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## Map of the code", 1)[1].split("\n## ", 1)[0]
    listed = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        names = re.findall(r"`([^`]+)`", line.split(" | ", 1)[0])
        base = names[0] if names[0].endswith("/") else ""
        listed.update(base + name for name in names if not name.endswith("/"))
    return listed


def has_code(path: Path) -> bool:
    """More than a docstring: an ``__init__.py`` that only names its package need not be listed."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return any(not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) for node in body)


def test_the_map_names_every_module_and_only_modules_that_exist():
    files = {
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*")
        if path.suffix in (".py", ".c", ".h") and (path.suffix != ".py" or path.name != "__init__.py" or has_code(path))
    }
    listed = listed_in_map()
    assert sorted(files - listed) == [], "modules missing from the map in docs/architecture.md"
    assert sorted(listed - files) == [], "the map in docs/architecture.md names files that do not exist"
