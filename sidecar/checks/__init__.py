"""Checks: one module per kind (sidecar.kinds registers them), all speaking the `Check` protocol."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


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


class CredentialsStatus(Protocol):
    """What a watched DSN file exposes for metrics (sidecar.credentials.DsnFile)."""

    @property
    def last_reload_ok(self) -> bool: ...

    @property
    def reloads(self) -> Mapping[str, int]: ...
