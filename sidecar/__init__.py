"""health-sidecar: answers kubelet probes for an application from cached PostgreSQL state."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("health-sidecar")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

SERVICE_ID = "health-sidecar"
