"""From specs to running checks: the one place that knows every kind."""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.checks import Check, CredentialsStatus
from sidecar.checks.http import HttpCheck
from sidecar.checks.postgres import PostgresCheck
from sidecar.checks.tcp import TcpCheck
from sidecar.checkspec import AnySpec, HttpSpec, TcpSpec
from sidecar.credentials import DsnFile, SecretsSink, ignore_secrets
from sidecar.options import default


@dataclass(frozen=True, slots=True)
class Built:
    """A check, and the DSN file it watches (for the reload metrics), if any."""

    check: Check
    spec: AnySpec
    credentials: CredentialsStatus | None = None


def build_check(
    spec: AnySpec,
    *,
    on_secrets: SecretsSink = ignore_secrets,
    max_connection_age: float = default("max_connection_age"),
) -> Built:
    """Make the check for one spec. A DSN read from a file is watched for rotation.
    `max_connection_age` is how long a postgres check keeps its connection."""
    if isinstance(spec, HttpSpec):
        return Built(HttpCheck(spec), spec)
    if isinstance(spec, TcpSpec):
        return Built(TcpCheck(spec), spec)
    target, credentials = spec.target, None
    if target.file_path is not None and target.dsn is not None:
        credentials = DsnFile(target.file_path, target.dsn, name=spec.name, on_secrets=on_secrets)
    return Built(PostgresCheck(spec, credentials, max_connection_age), spec, credentials)
