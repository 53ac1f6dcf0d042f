"""The benchmark: health-sidecar against the in-app health check it replaces (issue 6)."""
