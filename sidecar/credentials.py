"""Rotating credentials: watch a mounted DSN file and offer each new DSN once it is valid.

Kubernetes updates a mounted Secret atomically: it writes the new files into a fresh timestamped
directory, then renames a `..data` symlink over the old one; the file the pod sees (`dsn`) is
itself a symlink through `..data`. So `poll()` stats the path (following symlinks) and reads it
only when that stat changed: on a steady file every check costs one stat, no read.

The watcher never decides whether a DSN works. PostgresCheck tries a candidate on a new
connection and calls `accept()` or `reject()`; a rejected candidate stays pending and is offered
again after a growing delay (1 s, 2 s, 4 s, ... up to 5 minutes, jittered), so a file rotated
before `ALTER ROLE` is taken up soon after the server accepts the new password, while the check
goes on with the old one, and a wrong password in the file is not a failed login on every check
(the pattern that locks accounts). New content starts afresh.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Final

import backoff
import structlog

from sidecar.checkspec import DatabaseTarget
from sidecar.inputs import read_dsn_file, split_driver
from sidecar.reasons import Reason

# The outcomes of a file change: health_sidecar_dsn_reloads_total{outcome=...}.
OUTCOMES: Final = ("applied", "invalid", "rejected")
# A file changed this recently may change again within the same timestamp tick with the same
# size and inode (an in-place writer, a 1-second-granular filesystem); the stat could not tell,
# so such a file is read again on the next poll too (git's "racily clean" index entries).
RACY_WINDOW_NS: Final = 2_000_000_000
# A rejected candidate's retry delays: ceilings doubling from the first to the last, each drawn
# in its upper half (never much sooner than the ceiling, yet pods rotated together spread out).
RETRY_FIRST_SECONDS: Final = 1.0
RETRY_MAX_SECONDS: Final = 300.0

# What a stat says about the file: (dev, inode, size, mtime, ctime), or why stat failed.
StatKey = tuple[int, int, int, int, int] | tuple[str, int]
SecretsSink = Callable[[Sequence[str]], None]


def ignore_secrets(secrets: Sequence[str]) -> None:
    """Default sink: no redactor to tell (tests, or an app built without logs.configure)."""


def retry_delays(
    jitter: Callable[[float], float] = backoff.full_jitter,
) -> Iterator[float]:
    """A rejected candidate's waits before its next try: half of each ceiling, plus up to half
    more drawn by `jitter` (backoff's full jitter: uniform in [0, value])."""
    ceiling = RETRY_FIRST_SECONDS
    while True:
        yield ceiling / 2 + jitter(ceiling / 2)
        ceiling = min(2 * ceiling, RETRY_MAX_SECONDS)


def _stat(path: str, now_ns: int) -> tuple[StatKey, bool]:
    """The file's key, and whether it changed so recently that the key may hide a change."""
    try:
        st = os.stat(path)  # follows symlinks: the `..data` swap gives a new inode
    except OSError as exc:
        # A missing or unreachable file keeps one key while it stays that way: logged once.
        return (type(exc).__name__, exc.errno or 0), False
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return key, now_ns - st.st_ctime_ns < RACY_WINDOW_NS


class DsnFile:
    """The DSN of one check, from a file that may change under it.

    `current` is the last DSN that worked (or the one read at start). `last_reload_ok` and
    `reloads` (applied/invalid/rejected) feed the reload metrics; they never hold a DSN.
    """

    def __init__(
        self,
        path: str,
        initial: str,
        *,
        name: str | None = None,
        on_secrets: SecretsSink = ignore_secrets,
        clock_ns: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], float] = time.monotonic,
        jitter: Callable[[float], float] = backoff.full_jitter,
    ) -> None:
        self.path = path
        self._clock_ns = clock_ns
        self._monotonic = monotonic
        self._jitter = jitter
        self._current = initial
        self._pending: str | None = None
        # The pending candidate's retry schedule, after a rejection: when, and the next waits.
        self._retry_at = 0.0
        self._delays: Iterator[float] | None = None
        self._on_secrets = on_secrets
        self.last_reload_ok = True
        self.reloads: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        # None: the first poll reads the file, closing the gap since the startup read.
        self._key: StatKey | None = None
        self._racy = False
        # What was last read under the current key (a DSN, or why the file is unusable): a racy
        # re-read that finds the same thing must not count, log or register anything twice.
        self._seen: tuple[StatKey, bool, str] | None = None
        self._rejection_logged: str | None = None
        log = structlog.get_logger("sidecar.credentials").bind(path=path)
        self._log = log.bind(check=name) if name is not None else log

    @property
    def current(self) -> str:
        return self._current

    @property
    def pending(self) -> str | None:
        """The file's content when it is not the current DSN (and valid): due for a try or not."""
        return self._pending

    def poll(self) -> str | None:
        """The pending DSN when it is due for a try, else None. One stat when the file has not
        changed."""
        self._read_if_changed()
        if self._pending is None or self._monotonic() < self._retry_at:
            return None
        return self._pending

    def _read_if_changed(self) -> None:
        key, racy = _stat(self.path, self._clock_ns())
        if key == self._key and not self._racy:
            return
        self._key, self._racy = key, racy
        try:
            dsn = read_dsn_file(self.path)
        except ValueError as exc:
            self._invalid(key, str(exc))
            return
        if self._seen == (key, True, dsn):
            return
        self._seen = (key, True, dsn)
        if dsn == self._current:
            # Rolled back, or rewritten unchanged: nothing to try, and nothing is wrong.
            self._pending = None
            self.last_reload_ok = True
            return
        if dsn != self._pending:
            # Before the DSN can reach any log line: a failed connection's message, a crash.
            self._on_secrets(DatabaseTarget(dsn=dsn).secrets())
            self._pending = dsn
            self._rejection_logged = None
            self._retry_at, self._delays = 0.0, None
            driver = split_driver(dsn)[1]
            if driver is not None:
                self._log.debug("dsn.driver_dropped", source="rotation", driver=driver)

    def accept(self, dsn: str) -> None:
        """The server took `dsn`: it is the DSN from now on."""
        if dsn not in (self._pending, self._current):
            self._on_secrets(DatabaseTarget(dsn=dsn).secrets())
        self._current = dsn
        if self._pending == dsn:
            self._pending = None
        self.last_reload_ok = True
        self.reloads["applied"] += 1
        self._log.info("credentials.reloaded")

    def reject(self, dsn: str, reason: Reason) -> None:
        """The server refused `dsn`: keep the current one; `dsn` is offered again after its
        next retry delay.

        Counted and logged once per file content, however often the candidate is retried."""
        self.last_reload_ok = False
        if dsn == self._pending:
            if self._delays is None:
                self._delays = retry_delays(self._jitter)
            self._retry_at = self._monotonic() + next(self._delays)
        if self._rejection_logged != dsn:
            self._rejection_logged = dsn
            self.reloads["rejected"] += 1
            self._log.warning("credentials.rejected", reason=reason.value)

    def _invalid(self, key: StatKey, problem: str) -> None:
        # The file moved on from any candidate it held: that candidate is no longer wanted.
        self._pending = None
        self.last_reload_ok = False
        if self._seen == (key, False, problem):
            return
        self._seen = (key, False, problem)
        self.reloads["invalid"] += 1
        # read_dsn_file's message names the path and the problem, never the content.
        self._log.warning("credentials.reload_failed", problem=problem)
