"""The check loop: the interval while healthy, jittered exponential backoff while failing.

The only writer of check state: one loop per check, each publishing its own snapshots.
While a check fails because nothing answers at the TCP level, the loop also asks it, about once
a second, whether its host listens again (a connect, no login: `checks.Reachable`), and runs the
check at once when it does: the backoff spaces logins, not the noticing of a database that is back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from typing import Final, Protocol

import backoff
import structlog

from sidecar.checks import Check, Reachable, RoleWatcher
from sidecar.checkspec import CheckSpec
from sidecar.reasons import CheckFailed, Reason
from sidecar.state import Board, CheckResult, CheckState, Transition, advance

# A jittered delay can come out near zero; never retry faster than this.
MIN_RETRY_DELAY_SECONDS: Final = 0.1
# The first retry waits up to this long (before jitter), then doubles up to backoff_max.
BACKOFF_FACTOR_SECONDS: Final = 1.0
# How often an unreachable dependency's hosts are probed while the loop waits out a delay.
REACH_PROBE_SECONDS: Final = 1.0
# The failures a TCP probe can see end: nothing listened, the path was cut or silent, the
# server went away. Not a login refused, nor a server that answers but is not ready.
UNREACHABLE: Final = frozenset(
    {
        Reason.CONNECTION_REFUSED,
        Reason.CONNECTION_RESET,
        Reason.TIMEOUT,
        Reason.NETWORK_ERROR,
        Reason.SERVER_SHUTDOWN,
    }
)
# The failures a session kept on the server can see end without a login: a failover or a
# switchover gives the server the role asked.
WRONG_ROLE: Final = frozenset({Reason.SESSION_ATTRS_MISMATCH, Reason.NOT_PRIMARY})


class Clock(Protocol):
    """Both clocks the check loop needs: monotonic for ages and deadlines, wall for display."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


class ResultObserver(Protocol):
    """Receives every result (metrics); must be cheap and must not raise."""

    def observe(
        self, result: CheckResult, state: CheckState, transition: Transition | None
    ) -> None: ...


def backoff_delays(
    backoff_max: float, jitter: Callable[[float], float] = backoff.full_jitter
) -> Iterator[float]:
    """Retry delays while failing: backoff's exponential ceilings (1 s, 2 s, 4 s, ... capped at
    `backoff_max`), each drawn with `jitter` (backoff's full jitter: uniform in [0, ceiling]),
    never under MIN_RETRY_DELAY_SECONDS."""
    ceilings = backoff.expo(factor=BACKOFF_FACTOR_SECONDS, max_value=backoff_max)
    next(ceilings)  # backoff's generators start with one empty step, as its decorators expect
    for ceiling in ceilings:
        yield min(backoff_max, max(MIN_RETRY_DELAY_SECONDS, jitter(ceiling)))


class CheckLoop:
    """Runs one check forever, publishing a new immutable CheckState after each run."""

    def __init__(
        self,
        spec: CheckSpec,
        check: Check,
        board: Board,
        *,
        observer: ResultObserver | None = None,
        clock: Clock | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[float], float] = backoff.full_jitter,
        first_delay: float = 0.0,
    ) -> None:
        """`first_delay`: seconds before the first check (the app spreads many checks' starts)."""
        self._spec = spec
        self._check = check
        self._board = board
        self._policy = spec.policy
        self._observer = observer
        self._clock = clock or SystemClock()
        self._sleep = sleep
        self._jitter = jitter
        self._first_delay = first_delay
        self._log = structlog.get_logger("sidecar.prober").bind(check=spec.name)

    async def run(self) -> None:
        """Probe until cancelled. Never returns otherwise; an escaping error is a bug."""
        clock = self._clock
        now = clock.monotonic()
        policy = self._policy
        state = CheckState(
            name=self._spec.name,
            kind=self._spec.kind,
            critical=self._spec.critical,
            timeout_seconds=policy.timeout,
            freshness_seconds=policy.freshness_seconds,
            state_since_monotonic=now,
            # Due when it will start: a delayed first check is not a stalled loop (/health).
            next_due_monotonic=now + self._first_delay,
        )
        self._board.publish(state)
        if self._first_delay > 0:
            await self._sleep(self._first_delay)
        delays: Iterator[float] | None = None
        # When a probe last saw the dependency come back (monotonic), for the fast retries of
        # a server still starting up.
        came_back_at: float | None = None
        task = asyncio.current_task()
        while True:
            # A check that swallowed our cancellation must not make the loop immortal.
            if task is not None and task.cancelling():
                raise asyncio.CancelledError
            result = await self.run_once()
            state, transition = advance(
                state,
                result,
                failure_threshold=self._policy.failure_threshold,
                success_threshold=self._policy.success_threshold,
            )
            if result.ok:
                delays = None
                delay = self._policy.interval
            else:
                if delays is None:
                    delays = backoff_delays(self._policy.backoff_max, self._jitter)
                delay = next(delays)
                if self._starting_since(result, came_back_at):
                    # Back at the TCP level, not yet taking sessions (57P03, no login tried):
                    # as often as a probe, for as long as the backoff's cap.
                    delay = min(delay, REACH_PROBE_SECONDS)
            state = replace(state, next_due_monotonic=clock.monotonic() + delay)
            self._board.publish(state)
            if self._observer is not None:
                self._observer.observe(result, state, transition)
            self._log_result(result, state, transition, delay)
            if await self._wait(delay, result):
                came_back_at = clock.monotonic()

    def _starting_since(self, result: CheckResult, came_back_at: float | None) -> bool:
        if result.reason is not Reason.SERVER_STARTING or came_back_at is None:
            return False
        return self._clock.monotonic() - came_back_at < self._policy.backoff_max

    async def _wait(self, delay: float, result: CheckResult) -> bool:
        """Sleep `delay`; end early when a probe finds that the check may pass now (True)."""
        check = self._check
        if result.reason in UNREACHABLE and isinstance(check, Reachable):
            # A refusal says "nothing listens" already; after a timeout or a reset, a first
            # probe that connects says the host listened all along (a hung server): nothing to
            # learn from it.
            seen_down = result.reason is Reason.CONNECTION_REFUSED
            return await self._probe_until(delay, check.reachable, seen_down=seen_down)
        if result.reason in WRONG_ROLE and isinstance(check, RoleWatcher):
            return await self._probe_until(delay, check.role_matches, seen_down=True)
        await self._sleep(delay)
        return False

    async def _probe_until(
        self, delay: float, probe: Callable[[], Awaitable[bool]], *, seen_down: bool
    ) -> bool:
        """Probe every REACH_PROBE_SECONDS within `delay`: True as soon as a probe says yes
        after one (or the failure itself) said no; a yes before any no ends the probing and the
        delay is waited out."""
        clock = self._clock
        until = clock.monotonic() + delay
        while (left := until - clock.monotonic()) > 0:
            await self._sleep(min(REACH_PROBE_SECONDS, left))
            if until - clock.monotonic() <= 0:
                return False
            try:
                yes = await probe()
            except Exception as exc:  # noqa: BLE001 -- a broken probe only costs the shortcut
                self._log.debug("prober.reachable", listening=False, error_type=type(exc).__name__)
                yes = False
            if yes and seen_down:
                self._log.debug("prober.reachable", listening=True)
                return True
            if yes:
                await self._sleep(max(0.0, until - clock.monotonic()))
                return False
            seen_down = True
        return False

    async def run_once(self) -> CheckResult:
        """One bounded check; failures become results, never exceptions (bar cancellation)."""
        clock = self._clock
        started = clock.monotonic()
        reason: Reason | None = None
        details: tuple[tuple[str, str], ...] = ()
        try:
            async with asyncio.timeout(self._policy.timeout):
                await self._check.run()
        except CheckFailed as exc:
            reason = exc.reason
            details = exc.details
        except TimeoutError:
            reason = Reason.TIMEOUT
        except Exception as exc:  # noqa: BLE001 -- the loop must outlive any bug in a check
            reason = Reason.INTERNAL_ERROR
            # Not cut here: logs.py cuts `error` after redaction, so a cut cannot split a secret.
            self._log.error("check.crashed", error_type=type(exc).__name__, error=str(exc))
            self._log.debug("check.crashed_traceback", exc_info=exc)
        if reason is not None:
            await self._reset_quietly()
        finished = clock.monotonic()
        return CheckResult(
            ok=reason is None,
            latency_seconds=max(0.0, finished - started),
            finished_at=clock.time(),
            finished_monotonic=finished,
            reason=reason,
            details=details,
        )

    async def _reset_quietly(self) -> None:
        try:
            async with asyncio.timeout(self._policy.timeout):
                await self._check.reset()
        except Exception as exc:  # noqa: BLE001 -- a failed cleanup must not stop probing
            self._log.warning("check.reset_failed", error_type=type(exc).__name__)

    def _log_result(
        self,
        result: CheckResult,
        state: CheckState,
        transition: Transition | None,
        delay: float,
    ) -> None:
        reason = result.reason.value if result.reason else None
        if transition is not None:
            log = self._log.info if transition.passing else self._log.warning
            log(
                "check.state_changed",
                **{"from": transition.previous},
                to=transition.current,
                reason=reason,
                # Short non-secret facts (schema_mismatch: both revisions); not on every check.
                details=dict(result.details) or None,
                previous_state_seconds=round(transition.previous_state_seconds, 3),
                consecutive_failures=state.consecutive_failures,
            )
        self._log.debug(
            "check.completed",
            ok=result.ok,
            reason=reason,
            latency_ms=round(result.latency_seconds * 1000, 3),
            consecutive_failures=state.consecutive_failures,
        )
        if not result.ok:
            self._log.debug("prober.backing_off", delay_seconds=round(delay, 3), reason=reason)
