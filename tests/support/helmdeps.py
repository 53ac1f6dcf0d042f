"""Charts that depend on the library chart get it the way a user's chart does: `helm dependency
update` (file://../health-sidecar-lib), run once per chart and test session, offline."""

from __future__ import annotations

import functools
from pathlib import Path


@functools.cache
def dependencies_updated(chart: Path) -> Path:
    """Vendor `chart`'s dependencies into its charts/ directory (ignored by git); return `chart`."""
    # Imported here: only the Helm tests need it, and they skip (or fail in CI) without it.
    import helm_python as helm  # noqa: PLC0415

    helm.dependency_update(chart, skip_refresh=True)
    return chart
