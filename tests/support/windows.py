"""When was the sidecar's answer wrong? Two sampled yes/no signals compared as step functions.

One signal is the sidecar's answer (`/ready` is 200), the other the truth (an acceptable server
exists, by the cluster's own view). Each is a list of `(monotonic seconds, value)` samples, and a
value holds from its sample until the next one. `wrong_windows(answers, truths)` returns the
spans, within the time both signals cover, in which the two disagree: ready while nothing
acceptable exists, or not ready while something does. A test bounds the longest span (and, for
flapping, their sum); it never demands that nothing ever blips, since both signals are sampled
and the sidecar's answer is, by design, at most one check old.

`Watch` samples both in two threads (a slow truth never delays the answer's samples) for the
length of a `with` block; `Poller` is one such thread, for callers that compare several answers
with one truth (bench/lifecycle.py).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Self

__all__ = ["Poller", "Watch", "Window", "changes", "wrong_windows"]

Samples = Sequence[tuple[float, bool]]
PERIOD_SECONDS: Final = 0.1
LIMIT_SECONDS: Final = 600.0


@dataclass(frozen=True, slots=True)
class Window:
    """A span in which the answer differed from the truth; `ready` is what the answer said."""

    start: float
    end: float
    ready: bool

    @property
    def seconds(self) -> float:
        return self.end - self.start


def wrong_windows(answers: Samples, truths: Samples) -> list[Window]:
    """The spans in which the step functions `answers` and `truths` differ, in time order.

    Both are sorted `(time, value)` samples. Only the time both cover counts: from the later of
    their first samples to the earlier of their last. Adjacent wrong spans with the same answer
    merge into one."""
    if not answers or not truths:
        return []
    start = max(answers[0][0], truths[0][0])
    end = min(answers[-1][0], truths[-1][0])
    if end <= start:
        return []
    cuts = sorted({start, end, *(t for t, _ in answers), *(t for t, _ in truths)})
    cuts = [t for t in cuts if start <= t <= end]
    windows: list[Window] = []
    i_answer = i_truth = 0
    for left, right in itertools.pairwise(cuts):
        # The values in force on [left, right): the last samples at or before `left`.
        while i_answer + 1 < len(answers) and answers[i_answer + 1][0] <= left:
            i_answer += 1
        while i_truth + 1 < len(truths) and truths[i_truth + 1][0] <= left:
            i_truth += 1
        ready, truth = answers[i_answer][1], truths[i_truth][1]
        if ready == truth:
            continue
        last = windows[-1] if windows else None
        if last is not None and last.end == left and last.ready == ready:
            windows[-1] = Window(last.start, right, ready)
        else:
            windows.append(Window(left, right, ready))
    return windows


def changes(samples: Samples, since: float) -> list[tuple[float, bool]]:
    """The first sample and every sample whose value differs from the one before it, with times
    relative to `since` (for assertion messages)."""
    out: list[tuple[float, bool]] = []
    for at, value in samples:
        if not out or out[-1][1] != value:
            out.append((round(at - since, 2), value))
    return out


class Poller:
    """Calls `probe` every `period` seconds in a thread; records (midpoint time, result)."""

    def __init__(
        self,
        probe: Callable[[], bool],
        period: float = PERIOD_SECONDS,
        limit: float = LIMIT_SECONDS,
        name: str = "poller",
    ) -> None:
        self.probe = probe
        self.period = period
        self.limit = limit
        self.samples: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self._stop.is_set() and time.monotonic() < deadline:
            started = time.monotonic()
            value = self.probe()
            self.samples.append(((started + time.monotonic()) / 2, value))
            self._stop.wait(max(0.0, self.period - (time.monotonic() - started)))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


class Watch:
    """Sample `ready()` and `truth()` about every `period` seconds for the `with` block (at most
    `limit` seconds), then tell the wrong windows."""

    def __init__(
        self,
        ready: Callable[[], bool],
        truth: Callable[[], bool],
        *,
        period: float = PERIOD_SECONDS,
        limit: float = LIMIT_SECONDS,
    ) -> None:
        self._answers = Poller(ready, period, limit, "watch-answer")
        self._truths = Poller(truth, period, limit, "watch-truth")
        self.started = 0.0

    def __enter__(self) -> Self:
        self.started = time.monotonic()
        self._answers.start()
        self._truths.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._answers.stop()
        self._truths.stop()

    @property
    def answers(self) -> list[tuple[float, bool]]:
        return list(self._answers.samples)

    @property
    def truths(self) -> list[tuple[float, bool]]:
        return list(self._truths.samples)

    def truth_now(self) -> bool | None:
        """The latest truth sample, None before the first."""
        samples = self._truths.samples
        return samples[-1][1] if samples else None

    def windows(self) -> list[Window]:
        return wrong_windows(self.answers, self.truths)

    def longest(self) -> float:
        return max((w.seconds for w in self.windows()), default=0.0)

    def total(self) -> float:
        return sum(w.seconds for w in self.windows())

    def describe(self) -> str:
        """The answer's and the truth's changes and the wrong windows, relative to the start."""
        t0 = self.started
        wrong = [
            (round(w.start - t0, 2), round(w.seconds, 2), "ready" if w.ready else "not ready")
            for w in self.windows()
        ]
        return (
            f"answer (ready?) changes: {changes(self.answers, t0)}\n"
            f"truth (acceptable server?) changes: {changes(self.truths, t0)}\n"
            f"wrong windows (start, seconds, answer): {wrong}"
        )
