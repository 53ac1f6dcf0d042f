"""The package's import graph: no cycles, and the leaves import nothing of ours."""

from __future__ import annotations

import ast
from pathlib import Path

SIDECAR = Path(__file__).resolve().parent.parent / "sidecar"
LEAVES = ("sidecar.inputs",)


def module_name(path: Path) -> str:
    parts = path.relative_to(SIDECAR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every sidecar module `path` imports, at the top or inside a function (lazily)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from sidecar import logs` imports the module sidecar.logs.
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found - {module_name(path)}


def graph() -> dict[str, set[str]]:
    paths = sorted(SIDECAR.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imports_of(path, modules) for path in paths}


def cycle_in(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the path that closes it, or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for target in sorted(edges.get(node, ())):
            found = visit(target, [*path, node])
            if found:
                return found
        done.add(node)
        return None

    for start in sorted(edges):
        found = visit(start, [])
        if found:
            return found
    return None


def test_sidecar_has_no_import_cycle() -> None:
    """No module of sidecar/ imports, directly or through others, a module that imports it."""
    edges = graph()
    assert "sidecar.config" in edges  # the graph was read at all
    assert cycle_in(edges) is None, " -> ".join(cycle_in(edges) or [])


def test_cycle_finder_finds_a_cycle() -> None:
    """The finder itself reports a two-module cycle (so the test above can fail)."""
    assert cycle_in({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == ["a", "b", "a"]
    assert cycle_in({"a": {"b"}, "b": set()}) is None


def test_leaves_import_nothing_of_ours() -> None:
    """The leaf modules (file reading, host validation) import no other sidecar module."""
    edges = graph()
    for leaf in LEAVES:
        assert edges[leaf] == set(), leaf
