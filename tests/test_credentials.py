"""The DSN file watcher (sidecar.credentials.DsnFile) on real files, no database.

Rotations are written the way kubelet updates a mounted Secret (`SecretVolume`, a faithful
copy of its AtomicWriter algorithm): a new timestamped directory, a `..data_tmp` symlink renamed
over `..data`, the visible `dsn` a symlink through `..data`. Logs go through the real pipeline
(`sidecar.logs.configure`) into memory and are read back as JSON lines.

`SecretVolume` and `captured_logs` are imported by tests/test_rotation.py too.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import pytest
import structlog
from support.secretvolume import LogCapture, SecretVolume, captured_logs

from sidecar import logs
from sidecar.credentials import RACY_WINDOW_NS, RETRY_MAX_SECONDS, DsnFile
from sidecar.inputs import MAX_DSN_FILE_BYTES, read_dsn_file
from sidecar.reasons import Reason

OLD_PASSWORD: Final = "0ld-Passw0rd-Kx7"
NEW_PASSWORD: Final = "n3w#Passw0rd-Qz9"  # '#' is percent-encoded in the DSN: both forms count
NO_CHANGE: Final = {"applied": 0, "invalid": 0, "rejected": 0}


class Clock:
    """The watcher's wall clock: real time, plus however far a test has moved it on."""

    def __init__(self) -> None:
        self.offset_ns = 0

    def __call__(self) -> int:
        return time.time_ns() + self.offset_ns

    def settle(self) -> None:
        """Move past RACY_WINDOW_NS: every file written so far is old enough to trust its stat."""
        self.offset_ns += RACY_WINDOW_NS + 1


class Ticker:
    """The watcher's monotonic clock, moved by hand: a rejected candidate's retry delays."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def after_any_delay(self) -> None:
        """Move past the longest retry delay: a rejected candidate is due again."""
        self.now += RETRY_MAX_SECONDS + 1


def dsn(password: str, user: str = "app", host: str = "db.example") -> str:
    return f"postgresql://{user}:{quote(password, safe='')}@{host}:5432/app"


OLD_DSN: Final = dsn(OLD_PASSWORD)
NEW_DSN: Final = dsn(NEW_PASSWORD)


@pytest.fixture(autouse=True)
def stat_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Judge the stat key alone: with the re-read window on, a file written a moment ago is
    read on every poll anyway, which would hide a stat key that missed a change. Tests of the
    window itself ask for `racy_window`."""
    monkeypatch.setattr("sidecar.credentials.RACY_WINDOW_NS", 0)


@pytest.fixture
def racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """The re-read window as shipped."""
    monkeypatch.setattr("sidecar.credentials.RACY_WINDOW_NS", RACY_WINDOW_NS)


@pytest.fixture
def captured() -> Iterator[LogCapture]:
    with captured_logs([OLD_DSN, OLD_PASSWORD]) as capture:
        yield capture


@pytest.fixture
def volume(tmp_path: Path) -> SecretVolume:
    """A Secret volume holding OLD_DSN (and a CA bundle, a second key of the same Secret)."""
    secret = SecretVolume(tmp_path / "secret")
    secret.write_dsn(OLD_DSN + "\n", **{"ca.crt": "-----BEGIN CERTIFICATE-----\n"})
    return secret


class SecretsSpy:
    """An `on_secrets` sink that records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, secrets: Sequence[str]) -> None:
        self.calls.append(tuple(secrets))


def assert_no_password(capture: LogCapture, *passwords: str) -> None:
    for password in passwords:
        for form in {password, quote(password, safe="")}:
            assert form not in capture.text, capture.text


# ---- rotation --------------------------------------------------------------------------------


def test_symlink_swap_offers_the_new_dsn(volume: SecretVolume, captured: LogCapture) -> None:
    """A kubelet-style ..data swap is seen on the next poll and offered as a candidate."""
    watcher = DsnFile(str(volume.path()), OLD_DSN, name="primary")
    assert watcher.reloads == NO_CHANGE
    assert watcher.poll() is None
    assert volume.write_dsn(NEW_DSN + "\n")
    assert watcher.poll() == NEW_DSN
    # Offered, not taken: the server has not said yes yet.
    assert watcher.current == OLD_DSN
    assert watcher.poll() == NEW_DSN  # still offered
    watcher.accept(NEW_DSN)
    assert watcher.current == NEW_DSN
    assert watcher.poll() is None
    assert watcher.last_reload_ok
    assert watcher.reloads == {**NO_CHANGE, "applied": 1}
    [reloaded] = captured.events("credentials.reloaded")
    assert reloaded["check"] == "primary"
    assert reloaded["path"] == str(volume.path())
    assert reloaded["level"] == "info"
    assert_no_password(captured, NEW_PASSWORD)


def test_change_before_the_first_poll_is_offered(volume: SecretVolume) -> None:
    """A file rotated between the startup read and the first poll is not missed."""
    watcher = DsnFile(str(volume.path()), OLD_DSN)
    volume.write_dsn(NEW_DSN)
    assert watcher.poll() == NEW_DSN


def test_same_dsn_under_a_new_inode_offers_nothing(
    volume: SecretVolume, captured: LogCapture
) -> None:
    """Another key of the Secret changes (a new ..data, same DSN): no candidate, nothing logged."""
    spy = SecretsSpy()
    watcher = DsnFile(str(volume.path()), OLD_DSN, on_secrets=spy)
    assert watcher.poll() is None
    before = os.stat(volume.path()).st_ino
    assert volume.write_dsn(OLD_DSN + "\n", **{"ca.crt": "-----BEGIN CERTIFICATE----- 2\n"})
    assert os.stat(volume.path()).st_ino != before  # the file really was replaced
    assert watcher.poll() is None
    assert watcher.poll() is None  # nothing pending either
    assert watcher.last_reload_ok
    assert watcher.reloads == NO_CHANGE
    assert spy.calls == []
    assert captured.events() == []


def test_in_place_rewrite_is_seen(tmp_path: Path) -> None:
    """A plain file rewritten in place (same inode; Vault agent, an editor) is seen too."""
    path = tmp_path / "dsn"
    path.write_text(OLD_DSN)
    watcher = DsnFile(str(path), OLD_DSN)
    assert watcher.poll() is None
    inode = os.stat(path).st_ino
    path.write_text(NEW_DSN)
    assert os.stat(path).st_ino == inode
    assert watcher.poll() == NEW_DSN


# ---- the redactor hears first ----------------------------------------------------------------


def test_new_secrets_are_registered_before_poll_returns(
    volume: SecretVolume, captured: LogCapture
) -> None:
    """on_secrets gets the new DSN and its password (both forms) once, before poll returns it."""
    spy = SecretsSpy()
    ticker = Ticker()
    watcher = DsnFile(str(volume.path()), OLD_DSN, on_secrets=spy, monotonic=ticker)
    watcher.poll()
    assert spy.calls == []  # the startup DSN's secrets are configure()'s business
    volume.write_dsn(NEW_DSN)
    offered = watcher.poll()
    assert offered == NEW_DSN
    [secrets] = spy.calls
    assert set(secrets) >= {NEW_DSN, quote(NEW_PASSWORD, safe=""), NEW_PASSWORD}
    # Offered again while the server refuses it: registered once is enough.
    watcher.reject(NEW_DSN, Reason.AUTH_FAILED)
    ticker.after_any_delay()
    assert watcher.poll() == NEW_DSN
    watcher.accept(NEW_DSN)
    assert len(spy.calls) == 1


def test_registered_secret_is_redacted_by_the_live_pipeline(
    volume: SecretVolume, captured: LogCapture
) -> None:
    """Wired to the pipeline's add_secrets, a rotated password is scrubbed from later lines."""
    watcher = DsnFile(
        str(volume.path()),
        OLD_DSN,
        on_secrets=lambda secrets: captured.pipeline.add_secrets(*secrets),
    )
    volume.write_dsn(NEW_DSN)
    assert watcher.poll() == NEW_DSN
    log = structlog.get_logger("test")
    # What a careless error message would carry: the DSN, the raw and the encoded password.
    log.error("connect.failed", error=f"cannot reach {NEW_DSN}", password=NEW_PASSWORD)
    logging.getLogger("asyncio").error("stdlib too: %s", NEW_PASSWORD)
    assert_no_password(captured, NEW_PASSWORD, OLD_PASSWORD)
    [event] = captured.events("connect.failed")
    assert event["error"] == f"cannot reach {logs.REDACTED}"
    assert event["password"] == logs.REDACTED
    assert logs.REDACTED in captured.text.splitlines()[-1]


# ---- a bad file keeps the last good DSN -------------------------------------------------------


def _unlink_visible(volume: SecretVolume) -> None:
    # The key removed from the Secret: kubelet deletes the visible `dsn` link.
    volume.write({"ca.crt": "-----BEGIN CERTIFICATE-----\n"})


def _directory(volume: SecretVolume) -> None:
    # A wrong mount: the path is a directory (the whole Secret mounted where the file should be).
    volume.path().unlink()
    volume.path().mkdir()


BAD_FILES: dict[str, Callable[[SecretVolume], object]] = {
    "wrong scheme": lambda v: v.write_dsn(f"mysql://app:{NEW_PASSWORD}@db/app"),
    "only the password": lambda v: v.write_dsn(NEW_PASSWORD),
    "password with a space": lambda v: v.write_dsn(f"postgresql://app:{NEW_PASSWORD} x@db/app"),
    "empty": lambda v: v.write_dsn(""),
    "blank lines": lambda v: v.write_dsn("\n \n"),
    "not UTF-8": lambda v: v.write_dsn(b"postgresql://app:\xff\xfe@db/app"),
    "too large": lambda v: v.write_dsn(NEW_DSN + "#" * MAX_DSN_FILE_BYTES),
    "bad port": lambda v: v.write_dsn(f"postgresql://app:{NEW_PASSWORD}@db:port/app"),
    "deleted": _unlink_visible,
    "a directory": _directory,
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_unusable_file_keeps_the_last_good_dsn(
    case: str, volume: SecretVolume, captured: LogCapture
) -> None:
    """A bad new file: last good DSN kept, reload failed once (counted, logged), never quoted."""
    spy = SecretsSpy()
    watcher = DsnFile(str(volume.path()), OLD_DSN, name="primary", on_secrets=spy)
    assert watcher.poll() is None
    BAD_FILES[case](volume)
    # Every poll a check would make meanwhile.
    for _ in range(5):
        assert watcher.poll() is None
    assert watcher.current == OLD_DSN
    assert not watcher.last_reload_ok
    assert watcher.reloads == {**NO_CHANGE, "invalid": 1}
    assert spy.calls == []
    [warning] = captured.events("credentials.reload_failed")
    assert warning["level"] == "warning"
    assert warning["check"] == "primary"
    assert warning["path"] == str(volume.path())
    assert str(volume.path()) in warning["problem"]
    assert captured.events() == [warning]
    assert_no_password(captured, NEW_PASSWORD, OLD_PASSWORD)


def test_recovery_after_a_bad_file(volume: SecretVolume, captured: LogCapture) -> None:
    """After a bad file, the next good one is offered and, accepted, marks the reload healthy."""
    watcher = DsnFile(str(volume.path()), OLD_DSN)
    watcher.poll()
    volume.write_dsn("")
    assert watcher.poll() is None
    assert not watcher.last_reload_ok
    volume.write_dsn(NEW_DSN)
    assert watcher.poll() == NEW_DSN
    watcher.accept(NEW_DSN)
    assert watcher.last_reload_ok
    assert watcher.current == NEW_DSN
    assert watcher.reloads == {"applied": 1, "invalid": 1, "rejected": 0}
    assert [e["event"] for e in captured.events()] == [
        "credentials.reload_failed",
        "credentials.reloaded",
    ]


def test_bad_file_rolled_back_is_healthy_again(volume: SecretVolume) -> None:
    """A bad file put back to the DSN in use: nothing to try, and the reload is healthy again."""
    watcher = DsnFile(str(volume.path()), OLD_DSN)
    volume.write_dsn("not a dsn")
    watcher.poll()
    assert not watcher.last_reload_ok
    volume.write_dsn(OLD_DSN)
    assert watcher.poll() is None
    assert watcher.last_reload_ok
    assert watcher.reloads == {**NO_CHANGE, "invalid": 1}


def test_bad_file_is_reported_once_while_it_stays(
    volume: SecretVolume, captured: LogCapture
) -> None:
    """A bad file left in place for long is reported once: not on every check."""
    clock = Clock()
    watcher = DsnFile(str(volume.path()), OLD_DSN, clock_ns=clock)
    volume.write_dsn("")
    watcher.poll()
    clock.settle()
    for _ in range(20):
        watcher.poll()
    assert watcher.reloads["invalid"] == 1
    assert len(captured.events("credentials.reload_failed")) == 1


def test_each_new_bad_state_is_reported(volume: SecretVolume, captured: LogCapture) -> None:
    """Two different bad files in a row are two reports; one bad file polled often is one."""
    watcher = DsnFile(str(volume.path()), OLD_DSN)
    volume.write_dsn("")
    watcher.poll()
    watcher.poll()
    _unlink_visible(volume)
    watcher.poll()
    watcher.poll()
    assert watcher.reloads["invalid"] == 2
    problems = [e["problem"] for e in captured.events("credentials.reload_failed")]
    assert len(problems) == 2
    assert "empty" in problems[0]
    assert "does not exist" in problems[1]


# ---- rejection: the server has not been told yet ----------------------------------------------


def test_rejected_candidate_is_offered_until_accepted(
    volume: SecretVolume, captured: LogCapture
) -> None:
    """A candidate the server refuses stays pending, is offered again after each retry delay,
    warned once."""
    ticker = Ticker()
    watcher = DsnFile(str(volume.path()), OLD_DSN, name="primary", monotonic=ticker)
    volume.write_dsn(NEW_DSN)
    for _ in range(3):
        assert watcher.poll() == NEW_DSN
        watcher.reject(NEW_DSN, Reason.AUTH_FAILED)
        assert watcher.current == OLD_DSN
        assert watcher.pending == NEW_DSN
        assert not watcher.last_reload_ok
        ticker.after_any_delay()
    # One file content refused, however often it was retried: counted once, as documented.
    assert watcher.reloads == {**NO_CHANGE, "rejected": 1}
    [warning] = captured.events("credentials.rejected")
    assert warning["reason"] == "auth_failed"
    assert warning["check"] == "primary"
    assert warning["level"] == "warning"
    # The server now knows the password (ALTER ROLE ran): the same candidate is taken.
    assert watcher.poll() == NEW_DSN
    watcher.accept(NEW_DSN)
    assert watcher.poll() is None
    assert watcher.last_reload_ok
    assert watcher.reloads == {"applied": 1, "invalid": 0, "rejected": 1}
    assert_no_password(captured, NEW_PASSWORD)


def test_rejected_candidate_waits_out_a_doubling_delay(volume: SecretVolume) -> None:
    """After each rejection the candidate is not offered again for a delay that doubles (1 s,
    2 s, 4 s, ... up to 5 minutes), though it stays pending; new file content starts afresh."""
    ticker = Ticker()
    # No jitter: each delay is its ceiling.
    watcher = DsnFile(str(volume.path()), OLD_DSN, monotonic=ticker, jitter=lambda value: value)
    volume.write_dsn(NEW_DSN)
    waits: list[float] = []
    for _ in range(11):
        assert watcher.poll() == NEW_DSN
        watcher.reject(NEW_DSN, Reason.AUTH_FAILED)
        rejected_at = ticker.now
        while watcher.poll() is None:
            assert watcher.pending == NEW_DSN
            ticker.now += 0.25
        waits.append(ticker.now - rejected_at)
    assert waits == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    third = dsn("third-Passw0rd")
    watcher.reject(NEW_DSN, Reason.AUTH_FAILED)
    volume.write_dsn(third)
    assert watcher.poll() == third  # at once


def test_file_changed_after_a_rejection_replaces_the_candidate(volume: SecretVolume) -> None:
    """A rejected candidate is dropped when the file changes: to a newer DSN, a bad file, or
    back to the DSN in use."""
    third = dsn("third-Passw0rd")
    spy = SecretsSpy()
    watcher = DsnFile(str(volume.path()), OLD_DSN, on_secrets=spy)
    volume.write_dsn(NEW_DSN)
    assert watcher.poll() == NEW_DSN
    watcher.reject(NEW_DSN, Reason.AUTH_FAILED)
    volume.write_dsn(third)
    assert watcher.poll() == third
    assert len(spy.calls) == 2
    watcher.reject(third, Reason.AUTH_FAILED)
    volume.write_dsn("garbage")
    assert watcher.poll() is None
    assert watcher.poll() is None
    assert watcher.poll() is None  # nothing pending either
    volume.write_dsn(OLD_DSN)
    assert watcher.poll() is None
    assert watcher.poll() is None  # nothing pending either
    assert watcher.last_reload_ok


# ---- cost ------------------------------------------------------------------------------------


class CallCounter:
    """Wraps a real function and counts its calls."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.real(*args, **kwargs)


@pytest.fixture
def io_counters(monkeypatch: pytest.MonkeyPatch) -> tuple[CallCounter, CallCounter]:
    """(stats, reads): the watcher's os.stat and read_dsn_file calls, still the real ones."""
    stats = CallCounter(os.stat)
    reads = CallCounter(read_dsn_file)
    monkeypatch.setattr(os, "stat", stats)
    monkeypatch.setattr("sidecar.credentials.read_dsn_file", reads)
    return stats, reads


@pytest.mark.usefixtures("racy_window")
def test_steady_file_costs_one_stat_per_poll(
    volume: SecretVolume, io_counters: tuple[CallCounter, CallCounter]
) -> None:
    """A file that has not changed (for a while) is stat'ed once per poll and never read."""
    stats, reads = io_counters
    clock = Clock()
    ticker = Ticker()
    watcher = DsnFile(str(volume.path()), OLD_DSN, clock_ns=clock, monotonic=ticker)
    clock.settle()
    watcher.poll()
    assert (stats.calls, reads.calls) == (1, 1)  # the first poll always reads
    for _ in range(100):
        assert watcher.poll() is None
    assert (stats.calls, reads.calls) == (101, 1)
    # A pending candidate is offered again from memory, not from the file.
    volume.write_dsn(NEW_DSN)  # (the writer's own stats are not the watcher's: start afresh)
    clock.settle()
    stats.calls = reads.calls = 0
    assert watcher.poll() == NEW_DSN
    watcher.reject(NEW_DSN, Reason.AUTH_FAILED)
    for _ in range(10):
        ticker.after_any_delay()
        assert watcher.poll() == NEW_DSN
    assert (stats.calls, reads.calls) == (11, 1)


@pytest.mark.usefixtures("racy_window")
def test_just_changed_file_is_read_again(
    volume: SecretVolume, io_counters: tuple[CallCounter, CallCounter]
) -> None:
    """Within RACY_WINDOW_NS of a change the stat cannot vouch for the content: re-read it."""
    _stats, reads = io_counters
    clock = Clock()
    watcher = DsnFile(str(volume.path()), OLD_DSN, clock_ns=clock)
    volume.write_dsn(NEW_DSN)
    watcher.poll()
    watcher.poll()
    assert reads.calls == 2
    clock.settle()
    watcher.poll()  # the last racy re-read: the file is old enough now
    watcher.poll()
    watcher.poll()
    assert reads.calls == 3


@pytest.mark.usefixtures("racy_window")
def test_rereading_the_same_content_changes_nothing(
    volume: SecretVolume, captured: LogCapture
) -> None:
    """The window's extra reads of an unchanged file register, count and log nothing twice."""
    spy = SecretsSpy()
    ticker = Ticker()
    watcher = DsnFile(str(volume.path()), OLD_DSN, on_secrets=spy, monotonic=ticker)
    volume.write_dsn(NEW_DSN)
    for _ in range(3):
        assert watcher.poll() == NEW_DSN
        watcher.reject(NEW_DSN, Reason.AUTH_FAILED)
        ticker.after_any_delay()
    assert len(spy.calls) == 1
    assert len(captured.events("credentials.rejected")) == 1
    volume.write_dsn("")
    for _ in range(3):
        assert watcher.poll() is None
    assert watcher.reloads == {"applied": 0, "invalid": 1, "rejected": 1}
    assert len(captured.events("credentials.reload_failed")) == 1
