"""Charts that depend on the library chart get it the way a user's chart does: `helm dependency
update` (file://../health-sidecar-lib), run once per chart and test run, offline.

Once per run, not per process: test modules call this at import, so every pytest-xdist worker
collects them at the same moment, and two `helm dependency update`s of one chart race on its
charts/ directory (one's tmpcharts-* vanishes under the other), or one rewrites the archive
another worker is loading."""

from __future__ import annotations

import functools
from pathlib import Path

from .once import once_per_run

REPO = Path(__file__).resolve().parents[2]


@functools.cache
def dependencies_updated(chart: Path) -> Path:
    """Vendor `chart`'s dependencies into its charts/ directory (ignored by git); return `chart`."""
    name = "helm-deps-" + "-".join(chart.resolve().relative_to(REPO).parts)

    def update(_: Path) -> dict[str, str]:
        # Imported here: only the Helm tests need it, and they skip (or fail in CI) without it.
        import helm_python as helm  # noqa: PLC0415

        helm.dependency_update(chart, skip_refresh=True)
        return {"chart": str(chart)}

    once_per_run(name, update, _nothing_to_undo)
    return chart


def _nothing_to_undo(_: object) -> None:
    """The vendored charts/ stays (git ignores it); the next run updates it again."""
