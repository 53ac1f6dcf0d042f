"""Response bodies in the IETF "Health Check Response Format for HTTP APIs" shape.

Bodies are serialised once per state change and reused for every request until the prober
publishes again (issue 6: no allocation-heavy work per request). Only `?verbose`, which
shows ages, renders per request.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

from sidecar import SERVICE_ID, __version__
from sidecar.health import STALL_GRACE_SECONDS, Verdict, liveness, readiness, startup
from sidecar.state import Board, CheckState, state_word

CONTENT_TYPE: Final = "application/health+json"


def _iso(timestamp: float) -> str:
    return (
        datetime.fromtimestamp(timestamp, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def component(state: CheckState, *, verbose: bool = False, now: float = 0.0) -> dict[str, Any]:
    """One entry of `checks`: the draft's component object for a check."""
    last = state.last
    entry: dict[str, Any] = {"componentType": "datastore", "status": state.status}
    if last is None:
        entry["status"] = "fail"
        entry["output"] = "no result yet"
    else:
        entry["time"] = _iso(last.finished_at)
        entry["observedValue"] = round(last.latency_seconds * 1000, 3)
        entry["observedUnit"] = "ms"
        if last.reason is not None:
            entry["output"] = last.reason.value
    if verbose:
        entry["state"] = state_word(state)
        entry["reason"] = last.reason.value if last and last.reason else None
        entry["latencySeconds"] = round(last.latency_seconds, 6) if last else None
        entry["ageSeconds"] = round(max(0.0, now - last.finished_monotonic), 3) if last else None
        entry["consecutiveFailures"] = state.consecutive_failures
        entry["consecutiveSuccesses"] = state.consecutive_successes
        entry["lastSuccessTime"] = (
            _iso(state.last_success_at) if state.last_success_at is not None else None
        )
        entry["nextCheckInSeconds"] = round(max(0.0, state.next_due_monotonic - now), 3)
    return entry


def document(
    board: Board,
    verdict: Verdict,
    *,
    with_checks: bool,
    verbose: bool = False,
    now: float = 0.0,
) -> dict[str, Any]:
    checks = board.checks.values() if with_checks else ()
    if not verdict.ok:
        status = "fail"
    elif any(state.status == "warn" for state in checks):
        status = "warn"
    else:
        status = "pass"
    doc: dict[str, Any] = {"status": status, "serviceId": SERVICE_ID, "releaseId": __version__}
    if verdict.output:
        doc["output"] = verdict.output
    if with_checks:
        doc["checks"] = {
            state.name: [component(state, verbose=verbose, now=now)] for state in checks
        }
    if verbose:
        doc["draining"] = board.draining
    return doc


def encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


Rendered = tuple[int, bytes]


class Views:
    """Status code and body per endpoint, memoised per snapshot.

    The cache key includes the board's `checks` mapping by identity: the prober replaces
    that mapping on every publish, which invalidates everything at once.
    """

    def __init__(self, board: Board, *, check_timeout: float, freshness: float) -> None:
        self._board = board
        self._check_timeout = check_timeout
        self._freshness = freshness
        self._seen: object = None
        self._cache: dict[tuple[str, Verdict, bool], Rendered] = {}
        # The hot path: a passing answer stays valid for this snapshot until a deadline
        # (freshness for /ready, the stall bound for /health), so most requests are one
        # identity check and one comparison.
        self._ready_fast: tuple[object, float, Rendered] | None = None
        self._health_fast: tuple[object, float, Rendered] | None = None

    def _memo(
        self, endpoint: str, verdict: Verdict, build: Callable[[], dict[str, Any]]
    ) -> Rendered:
        board = self._board
        if board.checks is not self._seen:
            self._cache = {}
            self._seen = board.checks
        key = (endpoint, verdict, board.draining)
        hit = self._cache.get(key)
        if hit is None:
            hit = (200 if verdict.ok else 503, encode(build()))
            self._cache[key] = hit
        return hit

    def ready(self, now: float, *, verbose: bool = False) -> Rendered:
        board = self._board
        fast = self._ready_fast
        if fast is not None and not verbose and not board.draining and not board.prober_stopped:
            seen, until, rendered = fast
            if seen is board.checks and now <= until:
                return rendered
        verdict = readiness(board, freshness=self._freshness, now=now)
        if verbose:
            doc = document(board, verdict, with_checks=True, verbose=True, now=now)
            return (200 if verdict.ok else 503, encode(doc))
        rendered = self._memo("ready", verdict, lambda: document(board, verdict, with_checks=True))
        if verdict.ok:
            oldest = min(s.last.finished_monotonic for s in board.checks.values() if s.last)
            self._ready_fast = (board.checks, oldest + self._freshness, rendered)
        return rendered

    def health(self, now: float, *, verbose: bool = False) -> Rendered:
        board = self._board
        fast = self._health_fast
        if fast is not None and not verbose and not board.prober_stopped:
            seen, until, rendered = fast
            if seen is board.checks and now <= until:
                return rendered
        verdict = liveness(board, check_timeout=self._check_timeout, now=now)
        if verbose:
            doc = document(board, verdict, with_checks=False, verbose=True, now=now)
            return (200 if verdict.ok else 503, encode(doc))
        rendered = self._memo(
            "health", verdict, lambda: document(board, verdict, with_checks=False)
        )
        if verdict.ok and board.checks:
            due = min(s.next_due_monotonic for s in board.checks.values())
            self._health_fast = (
                board.checks,
                due + self._check_timeout + STALL_GRACE_SECONDS,
                rendered,
            )
        return rendered

    def startup(self, now: float, *, verbose: bool = False) -> Rendered:
        board = self._board
        verdict = startup(board)
        if verbose:
            doc = document(board, verdict, with_checks=True, verbose=True, now=now)
            return (200 if verdict.ok else 503, encode(doc))
        # Once started, the checks' current state is /ready's business, not /startup's.
        return self._memo(
            "startup", verdict, lambda: document(board, verdict, with_checks=not verdict.ok)
        )
