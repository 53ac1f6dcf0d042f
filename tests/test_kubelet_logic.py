"""The test kubelet's pure logic: probes read from a container spec, thresholds applied to
made-up results (no clock, no network)."""

from __future__ import annotations

from typing import Any

from support.kubelet import Probe, ProbeResult, ProbeState

CONTAINER: dict[str, Any] = {
    "name": "health-sidecar",
    "ports": [{"name": "sidecar", "containerPort": 8081}],
    "startupProbe": {"httpGet": {"path": "/health", "port": "sidecar"}, "failureThreshold": 30},
    "livenessProbe": {"tcpSocket": {"port": 8081}, "periodSeconds": 2},
    "readinessProbe": {
        "httpGet": {"path": "/ready", "port": 8081},
        "failureThreshold": 2,
        "successThreshold": 2,
    },
}


def results(state: ProbeState, outcomes: str) -> list[bool]:
    """Feed '+'/'-' outcomes; the thresholded value after each."""
    seen = []
    for at, outcome in enumerate(outcomes):
        state.record(ProbeResult(float(at), outcome == "+", ""))
        seen.append(state.passing)
    return seen


def test_probe_reads_named_port_and_kubernetes_defaults() -> None:
    """A named port resolves to its containerPort; left-out fields take Kubernetes' defaults."""
    startup = Probe.from_container(CONTAINER, "startupProbe")
    assert startup is not None
    assert (startup.handler, startup.port, startup.path) == ("httpGet", 8081, "/health")
    assert (startup.period_seconds, startup.timeout_seconds) == (10, 1)
    assert (startup.failure_threshold, startup.success_threshold) == (30, 1)
    liveness = Probe.from_container(CONTAINER, "livenessProbe")
    assert liveness is not None
    assert (liveness.handler, liveness.path) == ("tcpSocket", "/")
    assert Probe.from_container({"name": "x"}, "readinessProbe") is None


def test_readiness_starts_false_and_flips_only_on_consecutive_thresholds() -> None:
    """Readiness needs successThreshold successes in a row, failureThreshold failures in a row."""
    probe = Probe.from_container(CONTAINER, "readinessProbe")
    assert probe is not None
    state = ProbeState.initial(probe)
    assert not state.passing
    assert results(state, "+-++-+--+") == [
        False,
        False,
        False,
        True,
        True,
        True,
        True,
        False,
        False,
    ]
    assert [value for _, value in state.transitions] == [True, False]


def test_liveness_starts_passing_and_reset_restores_initial_value() -> None:
    """Liveness starts true (kubelet's initial value); a restarted container starts afresh."""
    probe = Probe.from_container(CONTAINER, "livenessProbe")
    assert probe is not None
    state = ProbeState.initial(probe)
    assert state.passing
    assert results(state, "--+---") == [True, True, True, True, True, False]
    assert state.failure_streak == 3
    state.reset()
    assert state.passing
    assert state.failure_streak == 0
    assert results(state, "--") == [True, True]
