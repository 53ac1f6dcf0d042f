"""Checks: one module per kind (sidecar.kinds registers them), all speaking the `Check` protocol."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable


class Check(Protocol):
    """A dependency probe. `run` raises CheckFailed (or anything, counted as internal_error)."""

    @property
    def name(self) -> str: ...

    async def run(self) -> None:
        """Probe once; return on success. The check loop bounds the call with the timeout."""

    async def reset(self) -> None:
        """Drop whatever the last run held (a connection), after a failure."""

    async def close(self) -> None:
        """Release resources at shutdown, promptly."""


@runtime_checkable
class Reachable(Protocol):
    """A check that can tell cheaply whether its dependency listens at all (a TCP connect, no
    login): the check loop asks while the dependency is unreachable, to run the check again
    the moment it answers (README, "Database lifecycles")."""

    async def reachable(self) -> bool:
        """True when a host accepts a connection now; never raises for an unreachable one."""
        ...


@runtime_checkable
class RoleWatcher(Protocol):
    """A check that, after failing because its server has the wrong role (a standby where a
    primary is asked), can ask that server again without a login: the check loop asks while it
    waits, to run the check the moment a failover has made the role right."""

    async def role_matches(self) -> bool:
        """True when the server has the role asked now; never raises."""
        ...


class CredentialsStatus(Protocol):
    """What a watched DSN file exposes for metrics (sidecar.credentials.DsnFile)."""

    @property
    def last_reload_ok(self) -> bool: ...

    @property
    def reloads(self) -> Mapping[str, int]: ...
