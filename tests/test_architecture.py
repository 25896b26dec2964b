"""The package's layers (docs/ARCHITECTURE.md): read every import of siamese/ and studio/ from the source and fail
on an import of a higher layer, a circle, an import of another module's private name, a module the doc does not
place, siamese importing gradio or studio, or studio using a private siamese name."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "ARCHITECTURE.md"


def layer_map(doc: str, package: str = "siamese") -> dict[str, int]:
    """Module -> layer, from the doc's table rows `| N name | `module` | ... |` (`siamese`: the package itself)."""
    rows = re.findall(r"^\|\s*(\d+)[^|]*\|\s*`([\w.]+)`\s*\|", doc, re.M)
    return {name if name == package else f"{package}.{name}": int(layer) for layer, name in rows}


def modules(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of `package`."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path, name: str) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every import in the file, function-local and
    TYPE_CHECKING ones included; `from . import x` of a module x counts as importing x."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found += [(target, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
    return found


def edges(files: dict[str, Path]) -> list[tuple[str, str, str | None, int]]:
    """(importer, imported module of `files`, imported name or None, line) within the tree of `files`."""
    out = []
    for name, path in files.items():
        for target, imported, line in imports(path, name):
            if imported is not None and f"{target}.{imported}" in files:  # from . import module
                target, imported = f"{target}.{imported}", None
            if target in files and target != name:
                out.append((name, target, imported, line))
    return out


def upward(graph: list[tuple[str, str, str | None, int]], layers: dict[str, int]) -> list[str]:
    return [f"{a} (layer {layers[a]}) imports {b} (layer {layers[b]}), line {line}"
            for a, b, _, line in graph if layers[b] > layers[a]]


def circles(graph: list[tuple[str, str, str | None, int]]) -> list[list[str]]:
    """The strongly connected sets of more than one module (Tarjan)."""
    succ: dict[str, set[str]] = {}
    for a, b, _, _ in graph:
        succ.setdefault(a, set()).add(b)
        succ.setdefault(b, set())
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in succ[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(succ):
        if v not in index:
            visit(v)
    return out


def private(graph: list[tuple[str, str, str | None, int]]) -> list[str]:
    return [f"{a} takes {n} from {b}, line {line}" for a, b, n, line in graph
            if n is not None and n.startswith("_") and not n.startswith("__")]


# -- the tree ---------------------------------------------------------------------------------------
SIAMESE = modules(ROOT / "siamese")
LAYERS = layer_map(DOC.read_text())
GRAPH = edges(SIAMESE)


def test_every_module_has_its_place_in_the_doc():
    assert sorted(set(SIAMESE) - set(LAYERS)) == [], "add a row for it to docs/ARCHITECTURE.md's table"
    assert sorted(set(LAYERS) - set(SIAMESE)) == [], "docs/ARCHITECTURE.md names modules that do not exist"


def test_imports_only_go_down():
    assert upward(GRAPH, LAYERS) == []


def test_no_import_circle():
    assert circles(GRAPH) == []


def test_no_module_takes_another_ones_private_names():
    assert private(GRAPH) == []


def test_the_library_never_imports_gradio_or_the_app():
    wrong = [f"{name}: {target}, line {line}" for name, path in SIAMESE.items()
             for target, _, line in imports(path, name) if target.split(".")[0] in ("gradio", "studio")]
    assert wrong == []


def test_the_app_uses_only_public_library_names():
    files = {**modules(ROOT / "studio"), "app": ROOT / "app.py"}
    wrong = []
    for name, path in files.items():
        for target, imported, line in imports(path, name):
            parts = target.split(".")
            hidden = [p for p in [*parts[1:], imported or ""] if p.startswith("_") and not p.startswith("__")]
            if parts[0] == "siamese" and hidden:
                wrong.append(f"{name} takes {imported or target} from {target}, line {line}")
    assert wrong == []


def test_the_checks_find_what_they_look_for(tmp_path):
    """A made-up package with an upward import, a circle and a private import: each check reports it."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("def f():\n    from .high import thing  # a function-local import counts\n")
    (pkg / "high.py").write_text("from .low import _helper\nfrom . import low\nthing = 1\n")
    (pkg / "other.py").write_text("from pkg import high\n")
    files = modules(pkg)
    graph = edges(files)
    layers = layer_map("| 1 x | `pkg` |\n| 1 low | `low` |\n| 2 high | `high` |\n| 3 top | `other` |\n", "pkg")
    assert upward(graph, layers) == ["pkg.low (layer 1) imports pkg.high (layer 2), line 2"]
    assert circles(graph) == [["pkg.high", "pkg.low"]]
    assert private(graph) == ["pkg.high takes _helper from pkg.low, line 1"]
    assert ("pkg.high", "pkg.low", None, 2) in graph  # `from . import low` is an import of the module
