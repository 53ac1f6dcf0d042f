"""health-sidecar: answers kubelet probes for an application from cached PostgreSQL state."""

from __future__ import annotations

# The one place the version lives: pyproject.toml reads it from here (setuptools dynamic),
# so the package does not pay for importlib.metadata (and its email.* imports) at start.
__version__ = "0.3.0"

SERVICE_ID = "health-sidecar"
