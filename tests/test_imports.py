"""The package's import map: modules share public names only, and no import goes in a circle."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "fashion_keras"
MODULES = sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__")


def _imports(module):
    """`(module imported, names taken from it)` for every import of the package's modules
    in `module`, at the top or inside a function."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("fashion_keras."):
                    found.append((alias.name.split(".")[1], []))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fashion_keras"):
            if node.module == "fashion_keras":  # from fashion_keras import files, plots
                found += [(a.name, []) for a in node.names if a.name in MODULES]
            else:
                found.append((node.module.split(".")[1], [a.name for a in node.names]))
    return found


def _private(name):
    return name.startswith("_") and not name.startswith("__")


@pytest.mark.parametrize("module", MODULES)
def test_no_module_uses_another_ones_private_names(module):
    private = [
        f"{source}.{name}" for source, names in _imports(module) for name in names if _private(name)
    ]
    # `from fashion_keras import report as r` then `r._image`: private too.
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    bound = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "fashion_keras"
        for alias in node.names
    }
    private += [
        f"{node.value.id}.{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in bound
        and _private(node.attr)
    ]
    assert not private, f"{module} uses {private}: make them public in a module of their own"


def test_the_import_map_has_no_cycles():
    graph = {m: {source for source, _ in _imports(m) if source != m} for m in MODULES}
    done, path = set(), []

    def visit(module):
        if module in path:
            return path[path.index(module) :] + [module]
        if module in done:
            return None
        path.append(module)
        for source in sorted(graph.get(module, ())):
            cycle = visit(source)
            if cycle:
                return cycle
        path.pop()
        done.add(module)
        return None

    for module in MODULES:
        cycle = visit(module)
        assert cycle is None, "import cycle: " + " -> ".join(cycle)
