"""The check kinds, registered once: a kind's name and the module that implements it.

Each kind's module (`sidecar.checks.<kind>`) holds everything about it: its spec, its keys with
their JSON Schema, how the check file's keys become a spec, the check itself, its failure
table and its body's componentType, declared as one `Kind` named `KIND`. The loader, the app,
the schema and the renderer ask this registry; none of them names a kind.

A kind's module is imported when a check of that kind is configured (or when the schema is
printed), never at start: a sidecar with the one postgres check loads no other kind.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from sidecar.checkspec import CheckSpec, DatabaseTarget
from sidecar.credentials import SecretsSink, ignore_secrets

if TYPE_CHECKING:
    from sidecar.checks import Check, CredentialsStatus
    from sidecar.fields import Fields
    from sidecar.resolver import DaemonExecutor

# Adding a kind: write its module, then add its line here. Nothing else changes.
MODULES: Final = {
    "postgres": "sidecar.checks.postgres",
    "http": "sidecar.checks.http",
    "tcp": "sidecar.checks.tcp",
}
NAMES: Final = tuple(MODULES)

S = TypeVar("S", bound=CheckSpec)


@dataclass(frozen=True, slots=True)
class Key:
    """One key a check of the kind takes, with its JSON Schema (type, range, pattern, words)."""

    name: str
    schema: Mapping[str, Any]
    required: bool = False


@dataclass(frozen=True, slots=True)
class Needs:
    """What the app hands every check it builds: settings and shared services, as arguments."""

    resolver: DaemonExecutor
    max_connection_age: float
    on_secrets: SecretsSink = ignore_secrets


@dataclass(frozen=True, slots=True)
class Built:
    """A running check, and the DSN file it watches (for the reload metrics), if any."""

    check: Check
    credentials: CredentialsStatus | None = None


@dataclass(frozen=True, slots=True)
class Kind(Generic[S]):
    """Everything the rest of the sidecar may know about one kind."""

    name: str
    keys: tuple[Key, ...]
    # The keys of one check (common keys already read into `common`) -> a spec, or None with
    # problems appended through `fields`. `database` is the environment's target.
    parse: Callable[[Fields, dict[str, Any], DatabaseTarget], S | None]
    build: Callable[[S, Needs], Built]
    # The health+json componentType of its checks.
    component_type: str = "component"
    # JSON Schema clauses between its keys (a `not required` pair, an `if`/`then`).
    rules: tuple[Mapping[str, Any], ...] = ()
    # What the loader refuses and the schema cannot say, as phrases for the schema's description.
    loader_only: tuple[str, ...] = ()

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(key.name for key in self.keys)


@functools.cache
def kind(name: str) -> Kind[Any]:
    """The registered kind `name` (KeyError if none), its module imported on first use."""
    module = importlib.import_module(MODULES[name])
    found: Kind[Any] = module.KIND
    return found


def every_kind() -> tuple[Kind[Any], ...]:
    """Every kind, each module imported: for the schema, and for a key no kind owns."""
    return tuple(kind(name) for name in NAMES)


def build(spec: CheckSpec, needs: Needs) -> Built:
    """The check that runs `spec`."""
    built: Built = kind(spec.kind).build(spec, needs)
    return built


def component_type(name: str) -> str:
    return kind(name).component_type
