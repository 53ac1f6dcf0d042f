"""Checks: one small module per dependency kind, all speaking the `Check` protocol."""

from __future__ import annotations

from typing import Protocol

from sidecar.state import Reason


class CheckFailed(Exception):
    """A check found its dependency unhealthy; `reason` is a fixed, label-safe word."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason.value)
        self.reason = reason


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
