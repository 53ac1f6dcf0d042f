"""Checks: one small module per dependency kind, all speaking the `Check` protocol."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from sidecar.state import Reason

Details = tuple[tuple[str, str], ...]


class CheckFailed(Exception):
    """A check found its dependency unhealthy; `reason` is a fixed, label-safe word.

    `details` are short key/value facts for `?verbose` (for schema_mismatch: the expected and
    found revisions). They never go into a metric label, and must never hold a secret.
    """

    def __init__(self, reason: Reason, details: Mapping[str, str] | None = None) -> None:
        super().__init__(reason.value)
        self.reason = reason
        self.details: Details = tuple((details or {}).items())


class Check(Protocol):
    """A dependency probe. `run` raises CheckFailed (or anything, counted as internal_error)."""

    @property
    def name(self) -> str: ...

    async def run(self) -> None:
        """Probe once; return on success. The prober bounds the call with the timeout."""

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
