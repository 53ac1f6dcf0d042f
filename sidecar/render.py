"""Response bodies: the IETF "Health Check Response Format for HTTP APIs" (health+json), or
kube-apiserver's plain-text check list when the client asks for text/plain.

Plain answers are judged and serialised once per snapshot and reused for every request until
a check loop publishes again or their verdict expires (no allocation-heavy work per request).
Only `?verbose`, `?exclude` and text answers, which people and scripts ask for, render per
request.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sidecar import SERVICE_ID, __version__
from sidecar.checkspec import NAME_PATTERN
from sidecar.health import (
    Verdict,
    check_liveness,
    check_readiness,
    liveness,
    loop_liveness,
    readiness,
    startup,
)
from sidecar.kinds import component_type
from sidecar.state import Board, CheckState, state_word

CONTENT_TYPE: Final = "application/health+json"
TEXT_CONTENT_TYPE: Final = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Query:
    """What the request asked for beyond the plain answer."""

    verbose: bool = False
    exclude: tuple[str, ...] = ()
    text: bool = False  # Accept prefers text/plain


PLAIN: Final = Query()
# (status, body, content type)
Rendered = tuple[int, bytes, str]


def _iso(timestamp: float) -> str:
    return (
        datetime.fromtimestamp(timestamp, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def component(state: CheckState, *, verbose: bool = False, now: float = 0.0) -> dict[str, Any]:
    """One entry of `checks`: the draft's component object for a check."""
    last = state.last
    entry: dict[str, Any] = {
        "componentType": component_type(state.kind),
        "status": state.status,
    }
    if last is None:
        entry["output"] = "no result yet"
    else:
        entry["time"] = _iso(last.finished_at)
        entry["observedValue"] = round(last.latency_seconds * 1000, 3)
        entry["observedUnit"] = "ms"
        if last.reason is not None:
            entry["output"] = last.reason.value
    if verbose:
        entry["kind"] = state.kind
        entry["criticality"] = state.criticality
        entry["state"] = state_word(state)
        entry["reason"] = last.reason.value if last and last.reason else None
        entry["details"] = dict(last.details) if last and last.details else None
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
    states: Iterable[CheckState] = (),
    verbose: bool = False,
    now: float = 0.0,
    notes: Collection[str] = (),
    with_checks: bool = True,
) -> dict[str, Any]:
    shown = list(states) if with_checks else []
    if not verdict.ok:
        status = "fail"
    elif any(state.status != "pass" for state in shown):
        status = "warn"
    else:
        status = "pass"
    doc: dict[str, Any] = {"status": status, "serviceId": SERVICE_ID, "releaseId": __version__}
    if verdict.output:
        doc["output"] = verdict.output
    if notes:
        doc["notes"] = list(notes)
    if with_checks:
        doc["checks"] = {
            state.name: [component(state, verbose=verbose, now=now)] for state in shown
        }
    if verbose:
        doc["draining"] = board.draining
    return doc


def encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _failure_text(state: CheckState, verdict: Verdict) -> str:
    """`reason (k=v, ...)`: the reason word and the check's details, for a text line."""
    last = state.last
    if last is None or last.ok or last.reason is None:
        # No result, stale, or passing below the failure threshold: the verdict says it.
        return (verdict.output or "failing").removeprefix(f"{state.name}: ")
    text = last.reason.value
    if last.details:
        text += " (" + ", ".join(f"{k}={v}" for k, v in last.details) + ")"
    return text


def check_line(state: CheckState, verdict: Verdict, *, alone: bool = False) -> str:
    """One kube-apiserver-style line of /ready: `[+]name ok` or `[-]name failed: reason`.
    In the list, a failing warn check adds that it does not fail readiness; `alone` (the line
    of /ready/<name>, which judges that check whatever its criticality) does not."""
    if verdict.ok:
        return _line(state.name)
    warn = not state.critical and not alone
    suffix = " (criticality warn: does not fail readiness)" if warn else ""
    return _line(state.name, _failure_text(state, verdict)) + suffix


def text_report(
    endpoint: str, lines: Iterable[str], verdict: Verdict, notes: Iterable[str]
) -> bytes:
    body = [*lines, *(f"warn: {note}" for note in notes)]
    body.append(f"{endpoint} check {'passed' if verdict.ok else 'failed'}")
    return ("\n".join(body) + "\n").encode()


def unknown_excludes(names: Collection[str], exclude: Iterable[str]) -> list[str]:
    """kube-apiserver's note for `?exclude=` names that match no check (not an error)."""
    unknown = [name for name in dict.fromkeys(exclude) if name not in names]
    if not unknown:
        return []
    # Echo only what could be a check name: a client's bytes never come back out raw.
    quoted = ", ".join(json.dumps(n) if NAME_PATTERN.match(n) else '"?"' for n in unknown)
    return [f"some health checks cannot be excluded: no matches for {quoted}"]


def _status(verdict: Verdict) -> int:
    return 200 if verdict.ok else 503


class Answers:
    """Status, body and content type per endpoint; plain answers memoised per snapshot.

    A snapshot is the board's `checks` mapping (by identity: the check loops replace it on
    every publish) with its two flags; a new one drops every memo at once. Within a snapshot
    a plain answer is reused while its verdict holds (`Verdict.until`, from sidecar.health),
    so a plain body must be a function of the snapshot and the verdict alone.
    """

    def __init__(self, board: Board, *, names: Collection[str] = ()) -> None:
        self._board = board
        # The configured check names: the only valid /ready/<name> and ?exclude= values.
        self.names = tuple(names)
        self._seen: object = None
        self._draining = self._stopped = False
        self._memos: dict[str, tuple[float, Rendered]] = {}

    def _reuse(self, key: str, now: float) -> Rendered | None:
        """The plain answer `key` of this snapshot, if its verdict still holds at `now`."""
        board = self._board
        if (
            board.states is not self._seen
            or board.draining is not self._draining
            or board.loop_stopped is not self._stopped
        ):
            self._memos = {}
            self._seen, self._draining, self._stopped = (
                board.states,
                board.draining,
                board.loop_stopped,
            )
            return None
        hit = self._memos.get(key)
        return hit[1] if hit is not None and now <= hit[0] else None

    def _keep(self, key: str, verdict: Verdict, doc: dict[str, Any]) -> Rendered:
        """Render a plain answer, kept (see _reuse) until its verdict expires."""
        rendered = (_status(verdict), encode(doc), CONTENT_TYPE)
        self._memos[key] = (verdict.until, rendered)
        return rendered

    def ready(self, now: float, query: Query = PLAIN) -> Rendered:
        return self._aggregate("ready", now, query)

    def health(self, now: float, query: Query = PLAIN) -> Rendered:
        return self._aggregate("health", now, query)

    def _aggregate(self, endpoint: str, now: float, query: Query) -> Rendered:
        """/ready (the critical checks' results) or /health (the loops keep their schedule)."""
        board = self._board
        ready = endpoint == "ready"
        judge = readiness if ready else liveness
        if query is PLAIN:
            if (hit := self._reuse(endpoint, now)) is not None:
                return hit
            verdict = judge(board, now=now)
            doc = document(board, verdict, states=board.states.values(), with_checks=ready)
            return self._keep(endpoint, verdict, doc)
        exclude = frozenset(query.exclude)
        verdict = judge(board, now=now, exclude=exclude)
        states = [s for s in board.states.values() if s.name not in exclude]
        notes = unknown_excludes(self.names, query.exclude)
        if query.text:
            one, line = (check_readiness, check_line) if ready else (check_liveness, _loop_line)
            return _text_answer(
                endpoint,
                verdict,
                query,
                lambda: [
                    *self._listing(exclude, lambda s: line(s, one(s, now=now))),
                    *self._lifecycle_lines(ready=ready),
                ],
                notes,
            )
        doc = document(
            board,
            verdict,
            states=states,
            with_checks=ready,
            verbose=query.verbose,
            now=now,
            notes=notes,
        )
        return (_status(verdict), encode(doc), CONTENT_TYPE)

    def startup(self, now: float, query: Query = PLAIN) -> Rendered:
        board = self._board
        if query is PLAIN and (hit := self._reuse("startup", now)) is not None:
            return hit
        verdict = startup(board)
        if query is PLAIN:
            # Once started, the checks' current state is /ready's business, not /startup's.
            doc = document(board, verdict, states=board.states.values(), with_checks=not verdict.ok)
            return self._keep("startup", verdict, doc)
        if query.text:
            return _text_answer(
                "startup", verdict, query, lambda: [_startup_line(s) for s in board.states.values()]
            )
        doc = document(board, verdict, states=board.states.values(), verbose=query.verbose, now=now)
        return (_status(verdict), encode(doc), CONTENT_TYPE)

    def _listing(self, exclude: Collection[str], line: Callable[[CheckState], str]) -> list[str]:
        """One text line per check, excluded ones marked as kube-apiserver does."""
        return [
            f"[+]{s.name} excluded: ok" if s.name in exclude else line(s)
            for s in self._board.states.values()
        ]

    def _lifecycle_lines(self, *, ready: bool) -> list[str]:
        board = self._board
        lines = []
        if ready and board.draining:
            lines.append(_line("draining", "the sidecar is shutting down"))
        if board.loop_stopped:
            lines.append(_line("probe-loop", "a probe loop stopped"))
        return lines

    def check(self, endpoint: str, name: str, now: float, query: Query = PLAIN) -> Rendered | None:
        """/ready/<name> (that check alone, whatever its criticality) or /health/<name> (that
        check's loop keeps its schedule); None if no check has that name."""
        board = self._board
        state = board.states.get(name)
        if state is None:
            return None
        ready = endpoint == "ready"
        plain = not query.verbose and not query.text
        key = f"{endpoint}/{name}"
        if plain and (hit := self._reuse(key, now)) is not None:
            return hit
        verdict = check_readiness(state, now=now) if ready else loop_liveness(board, state, now=now)
        if plain:
            return self._keep(key, verdict, document(board, verdict, states=[state]))
        if query.text:
            line = functools.partial(check_line, alone=True) if ready else _loop_line
            return _text_answer(endpoint, verdict, query, lambda: [line(state, verdict)])
        doc = document(board, verdict, states=[state], verbose=True, now=now)
        return (_status(verdict), encode(doc), CONTENT_TYPE)


TEXT_OK: Final[Rendered] = (200, b"ok\n", TEXT_CONTENT_TYPE)


def _text_answer(
    endpoint: str,
    verdict: Verdict,
    query: Query,
    lines: Callable[[], list[str]],
    notes: Collection[str] = (),
) -> Rendered:
    """kube-apiserver's text: `ok` when passing and not verbose, else the check list.

    Notes (unknown `?exclude=` names) are printed either way, as `warn:` lines: they are the
    only sign that an exclusion did nothing."""
    if verdict.ok and not query.verbose:
        if not notes:
            return TEXT_OK
        return (200, "".join(f"warn: {n}\n" for n in notes).encode() + b"ok\n", TEXT_CONTENT_TYPE)
    return (_status(verdict), text_report(endpoint, lines(), verdict, notes), TEXT_CONTENT_TYPE)


def _loop_line(state: CheckState, verdict: Verdict) -> str:
    if verdict.ok:
        return _line(state.name)
    return _line(state.name, verdict.output or "probe loop stalled")


def _startup_line(state: CheckState) -> str:
    if state.ever_passed:
        return _line(state.name)
    if not state.critical:
        return _line(state.name) + " (criticality warn: not awaited)"
    return _line(state.name, "not passed yet")


def _line(name: str, failure: str | None = None) -> str:
    """kube-apiserver's line for one check: `[+]name ok`, or `[-]name failed: why`."""
    return f"[+]{name} ok" if failure is None else f"[-]{name} failed: {failure}"
