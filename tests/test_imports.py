"""The package's import graph: which module may import which (a table), no cycles, leaves."""

from __future__ import annotations

import ast
from pathlib import Path

SIDECAR = Path(__file__).resolve().parent.parent / "sidecar"
LEAVES = (
    "sidecar.inputs",
    "sidecar.reasons",
    "sidecar.checks",
    "sidecar.resolver",
    "sidecar.pghome",
    "sidecar.negotiation",
)

# Every module of sidecar/ and the sidecar modules it may import (at the top, lazily, or for
# types only). An import not listed here fails test_every_import_is_allowed: a new edge is a
# decision about layers, made here in a review, not in passing.
_CHECK_KIND = ("sidecar.checks.failures", "sidecar.checkspec", "sidecar.fields", "sidecar.kinds")
ALLOWED: dict[str, set[str]] = {
    # Leaves: the version, input reading, reasons, the Check protocol, the resolver pool, the
    # exec probe (standard library only), the log pipeline, Accept-style headers' weights.
    "sidecar": set(),
    "sidecar.inputs": set(),
    "sidecar.reasons": set(),
    "sidecar.checks": set(),
    "sidecar.resolver": set(),
    "sidecar.probe": set(),
    "sidecar.logs": set(),
    "sidecar.pghome": set(),
    "sidecar.negotiation": set(),
    # Declarations: settings, what every check has, typed reads of the check file.
    "sidecar.options": {"sidecar.inputs"},
    "sidecar.checkspec": {"sidecar.inputs", "sidecar.options"},
    "sidecar.fields": {"sidecar.checkspec", "sidecar.inputs", "sidecar.options"},
    "sidecar.credentials": {"sidecar.checkspec", "sidecar.inputs", "sidecar.reasons"},
    # The registry names its kinds' modules as text only: it imports none of them.
    "sidecar.kinds": {
        "sidecar.checks",
        "sidecar.checkspec",
        "sidecar.credentials",
        "sidecar.fields",
        "sidecar.resolver",
    },
    # The kinds: each imports the shared classifier, declarations and the registry's types.
    "sidecar.checks.failures": {"sidecar.reasons"},
    "sidecar.checks.tcp": {*_CHECK_KIND, "sidecar.options"},
    "sidecar.checks.http": {*_CHECK_KIND, "sidecar", "sidecar.inputs", "sidecar.reasons"},
    "sidecar.checks.postgres": {
        *_CHECK_KIND,
        "sidecar.checks",
        "sidecar.checks.pgconnect",
        "sidecar.checks.pgrole",
        "sidecar.checks.reach",
        "sidecar.credentials",
        "sidecar.inputs",
        "sidecar.options",
        "sidecar.reasons",
        "sidecar.resolver",
    },
    # postgres's parts: connecting as libpq (hosts, the role asked), and a TCP probe.
    "sidecar.checks.pgconnect": {
        "sidecar",
        "sidecar.checks.pgrole",
        "sidecar.reasons",
        "sidecar.resolver",
    },
    "sidecar.checks.pgrole": {"sidecar.reasons"},
    "sidecar.checks.reach": set(),
    # Reading the configuration: the check file through the registry, never a kind by name
    # (bar the environment's own postgres check).
    "sidecar.checkfile": {"sidecar.checkspec", "sidecar.fields", "sidecar.inputs", "sidecar.kinds"},
    "sidecar.schema": {"sidecar.checkspec", "sidecar.fields", "sidecar.kinds"},
    "sidecar.config": {
        "sidecar",
        "sidecar.checkfile",
        "sidecar.checks.postgres",
        "sidecar.checkspec",
        "sidecar.inputs",
        "sidecar.options",
    },
    # Running: state, verdicts, the loop; then what answers requests.
    "sidecar.state": {"sidecar.reasons"},
    "sidecar.health": {"sidecar.state"},
    "sidecar.loop": {"sidecar.checks", "sidecar.checkspec", "sidecar.reasons", "sidecar.state"},
    "sidecar.metrics": {
        "sidecar",
        "sidecar.checks",
        "sidecar.credentials",
        "sidecar.health",
        "sidecar.reasons",
        "sidecar.state",
    },
    "sidecar.render": {
        "sidecar",
        "sidecar.checkspec",
        "sidecar.health",
        "sidecar.kinds",
        "sidecar.state",
    },
    # The /metrics renderer: prometheus-client in a worker thread, and the headers' weights.
    "sidecar.exposition": {"sidecar.negotiation"},
    "sidecar.handlers": {
        "sidecar.checkspec",
        "sidecar.exposition",
        "sidecar.metrics",
        "sidecar.negotiation",
        "sidecar.render",
    },
    # Wiring: the app factory, the server, the command.
    "sidecar.app": {
        "sidecar.checks",
        "sidecar.checkspec",
        "sidecar.config",
        "sidecar.credentials",
        "sidecar.exposition",
        "sidecar.handlers",
        "sidecar.kinds",
        "sidecar.loop",
        "sidecar.metrics",
        "sidecar.render",
        "sidecar.resolver",
        "sidecar.state",
    },
    "sidecar.server": {"sidecar", "sidecar.app", "sidecar.config", "sidecar.metrics"},
    "sidecar.__main__": {
        "sidecar",
        "sidecar.app",
        "sidecar.checks.postgres",
        "sidecar.config",
        "sidecar.inputs",
        "sidecar.logs",
        "sidecar.options",
        "sidecar.pghome",
        "sidecar.probe",
        "sidecar.server",
    },
}


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


def disallowed(edges: dict[str, set[str]], allowed: dict[str, set[str]]) -> list[str]:
    """Every import of `edges` that `allowed` does not list, as `module -> target`."""
    found = []
    for module, targets in sorted(edges.items()):
        if module not in allowed:
            found.append(f"{module} has no row in ALLOWED: add one (what it may import)")
            continue
        found.extend(f"{module} -> {target}" for target in sorted(targets - allowed[module]))
    return found


def test_every_import_is_allowed() -> None:
    """Each module of sidecar/ imports only what its row of the ALLOWED table lists."""
    assert disallowed(graph(), ALLOWED) == []


def test_the_table_check_reports_an_unlisted_edge() -> None:
    """An import that the table does not list is reported (so the test above can fail)."""
    edges = {"sidecar.state": {"sidecar.reasons", "sidecar.checkspec"}, "sidecar.new": set()}
    assert disallowed(edges, ALLOWED) == [
        "sidecar.new has no row in ALLOWED: add one (what it may import)",
        "sidecar.state -> sidecar.checkspec",
    ]


def test_the_kinds_are_reached_only_through_the_registry() -> None:
    """No module but the command and the settings (the environment's postgres check) imports a
    kind's module: the loader, the app, the schema and the renderer ask sidecar.kinds."""
    kinds = {
        m for m in ALLOWED if m.startswith("sidecar.checks.") and m != "sidecar.checks.failures"
    }
    importers = {m for m, targets in ALLOWED.items() if targets & kinds and m not in kinds}
    assert importers <= {"sidecar.config", "sidecar.__main__"}


def test_leaves_import_nothing_of_ours() -> None:
    """The leaf modules (file reading, host validation) import no other sidecar module."""
    edges = graph()
    for leaf in LEAVES:
        assert edges[leaf] == set(), leaf
