"""From specs to running checks: the one place that knows every kind (issue 7)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sidecar.checks import Check, CredentialsStatus
from sidecar.checkspec import AnySpec, HttpSpec, PostgresSpec, TcpSpec

SecretsSink = Callable[[Sequence[str]], None]


def _ignore(secrets: Sequence[str]) -> None:
    """Default sink for new secrets, for tests that configure no redactor."""


@dataclass(frozen=True, slots=True)
class Built:
    """A check, and the DSN file it watches (for the reload metrics), if any."""

    check: Check
    spec: AnySpec
    credentials: CredentialsStatus | None = None


def build_check(spec: AnySpec, *, on_secrets: SecretsSink = _ignore) -> Built:
    """Make the check for one spec. A DSN read from a file is watched for rotation."""
    # Imported per kind: each module pulls in only what its kind needs.
    if isinstance(spec, PostgresSpec):
        from sidecar.checks.postgres import PostgresCheck  # noqa: PLC0415
        from sidecar.credentials import DsnFile  # noqa: PLC0415

        target = spec.target
        if target.file_path is not None and target.dsn is not None:
            credentials = DsnFile(
                target.file_path, target.dsn, name=spec.name, on_secrets=on_secrets
            )
            return Built(PostgresCheck(spec, credentials=credentials), spec, credentials)
        return Built(PostgresCheck(spec), spec)
    if isinstance(spec, HttpSpec):
        from sidecar.checks.http import HttpCheck  # noqa: PLC0415

        return Built(HttpCheck(spec), spec)
    if isinstance(spec, TcpSpec):
        from sidecar.checks.tcp import TcpCheck  # noqa: PLC0415

        return Built(TcpCheck(spec), spec)
    raise TypeError(f"no check for {type(spec).__name__}")  # unreachable: AnySpec is closed
