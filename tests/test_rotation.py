"""Credential rotation end to end: a real PostgreSQL, ALTER ROLE, and a Secret volume swapped
the way kubelet swaps it (tests/test_credentials.py, SecretVolume).

In-process: the real PostgresCheck watching a DsnFile, driven by the real CheckLoop, logs through
the real pipeline into memory. Every check result is recorded: a rotation, in either order, must
not fail a single one, and must end on a new session that logged in with the new password.
Last, the real process (`python -m sidecar` with SIDECAR_DATABASE_URL_FILE): /ready stays 200
through a rotation, the reload metrics count it, and a crash message holding the new DSN is
logged without it (the rotated secret reached the redactor).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import asyncpg
import pytest
import support
from sidecar_proc import Sampler, SidecarProcess, set_fault, timed_until
from support import wait_until_async
from support.pg import SUPPORT_DATABASE, PostgresServer, postgres_check
from support.secretvolume import LogCapture, SecretVolume, captured_logs

from sidecar import logs
from sidecar.checks.pgconnect import APPLICATION_NAME
from sidecar.checks.postgres import PostgresCheck, PostgresSpec
from sidecar.checkspec import CheckPolicy, DatabaseTarget
from sidecar.credentials import DsnFile
from sidecar.loop import CheckLoop
from sidecar.state import Board, CheckResult, CheckState, Transition

ROLE: Final = "rotor"
OLD_PASSWORD: Final = "0ld-R0tation#Pw-Ab3"
NEW_PASSWORD: Final = "n3w-R0tation#Pw-Xy7"
# A candidate's connection gets what a passing check leaves of the timeout: ample locally.
POLICY: Final = CheckPolicy(interval=0.2, timeout=4.0, backoff_max=1.0)
SLACK: Final = 2 * support.SLACK  # a reload and a reconnect, one after the other


class Recorder:
    """A ResultObserver keeping every result the prober produced."""

    def __init__(self) -> None:
        self.results: list[CheckResult] = []

    def observe(
        self, result: CheckResult, state: CheckState, transition: Transition | None
    ) -> None:
        self.results.append(result)

    def failures(self) -> list[str]:
        return [str(r.reason) for r in self.results if not r.ok]

    async def more_passes(self, count: int) -> None:
        """Wait for `count` more results (all of which must pass, checked at the end)."""
        target = len(self.results) + count
        await wait_until_async(
            lambda: len(self.results) >= target, timeout=SLACK, message=f"{count} more checks"
        )


@dataclass
class Rig:
    pg: PostgresServer
    volume: SecretVolume
    watcher: DsnFile
    check: PostgresCheck
    recorder: Recorder
    log: LogCapture

    @property
    def old_dsn(self) -> str:
        return self.pg.dsn(ROLE, OLD_PASSWORD)

    @property
    def new_dsn(self) -> str:
        return self.pg.dsn(ROLE, NEW_PASSWORD)

    def backends(self) -> list[dict[str, Any]]:
        """The sidecar's sessions on the server now."""
        return self.pg.fetch(
            "SELECT pid, usename, backend_start FROM pg_stat_activity"
            " WHERE application_name = $1 AND pid <> pg_backend_pid()",
            APPLICATION_NAME,
            database=SUPPORT_DATABASE,
        )

    async def one_backend(self, *, other_than: int | None = None) -> dict[str, Any]:
        """Wait until the sidecar holds exactly one session (not `other_than`); return it."""

        def single() -> dict[str, Any] | None:
            found = self.backends()
            if len(found) == 1 and found[0]["pid"] != other_than:
                return found[0]
            return None

        found = await wait_until_async(
            single, timeout=SLACK, message=f"one session other than {other_than}"
        )
        assert found is not None  # wait_until_async returns only a truthy value
        return found

    def alter_password(self) -> dt.datetime:
        """ALTER ROLE to NEW_PASSWORD; the server's clock right after it committed."""
        self.pg.alter_password(ROLE, NEW_PASSWORD)
        now: dt.datetime = self.pg.fetchval("SELECT now()")
        return now

    async def assert_rotated(self, before: dict[str, Any], altered_at: dt.datetime) -> None:
        """A new session, opened after ALTER ROLE (so with the new password), replaced the old;
        the old password is refused now, and not one check failed on the way."""
        after = await self.one_backend(other_than=before["pid"])
        assert after["usename"] == ROLE
        assert after["backend_start"] > altered_at
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(self.old_dsn, timeout=SLACK)
        assert self.watcher.current == self.new_dsn
        assert self.watcher.last_reload_ok
        assert self.watcher.reloads["applied"] == 1
        await self.recorder.more_passes(3)  # and it goes on passing on the new session
        assert self.recorder.failures() == []
        assert (await self.one_backend())["pid"] == after["pid"]
        self.assert_no_new_password_logged()

    def assert_no_new_password_logged(self) -> None:
        for form in (NEW_PASSWORD, quote(NEW_PASSWORD, safe=""), OLD_PASSWORD):
            assert form not in self.log.text, self.log.text[-2000:]
        assert self.log.events("check.completed"), "debug logging was not on"


@pytest.fixture
async def rig(
    pg_private: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Rig]:
    """A role with OLD_PASSWORD, its DSN in a Secret volume, and a check probing through it."""
    # The stat key alone must see kubelet's swap (a file written a moment ago would otherwise
    # be re-read on every poll, hiding a key that missed it); the window only adds reads.
    monkeypatch.setattr("sidecar.credentials.RACY_WINDOW_NS", 0)
    pg = pg_private
    pg.create_role(ROLE, OLD_PASSWORD)
    volume = SecretVolume(tmp_path / "secret")
    old_dsn = pg.dsn(ROLE, OLD_PASSWORD)
    volume.write_dsn(old_dsn + "\n")
    target = DatabaseTarget(dsn=old_dsn, source="config", file_path=str(volume.path()))
    # As the sidecar starts: the startup secrets to configure(), later ones through on_secrets.
    with captured_logs(target.secrets()) as log:
        watcher = DsnFile(
            str(volume.path()),
            old_dsn,
            name="primary",
            on_secrets=lambda secrets: log.pipeline.add_secrets(*secrets),
        )
        spec = PostgresSpec(name="primary", policy=POLICY, target=target)
        check = postgres_check(spec, watcher)
        recorder = Recorder()
        prober = CheckLoop(spec, check, Board(), observer=recorder)
        task = asyncio.create_task(prober.run())
        try:
            await recorder.more_passes(2)
            yield Rig(pg, volume, watcher, check, recorder, log)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await check.close()


@pytest.mark.slow
async def test_alter_role_then_file_swap(rig: Rig) -> None:
    """ALTER ROLE first: the old session carries on, the swapped file is taken at once."""
    before = await rig.one_backend()
    altered_at = rig.alter_password()
    # An open session is not re-authenticated: checks keep passing on it meanwhile.
    await rig.recorder.more_passes(5)
    assert (await rig.one_backend())["pid"] == before["pid"]
    rig.volume.write_dsn(rig.new_dsn + "\n")
    await wait_until_async(lambda: rig.watcher.reloads["applied"] == 1, timeout=SLACK)
    assert rig.watcher.reloads == {"applied": 1, "invalid": 0, "rejected": 0}
    await rig.assert_rotated(before, altered_at)
    [reloaded] = rig.log.events("credentials.reloaded")
    assert reloaded["check"] == "primary"
    assert rig.log.events("credentials.rejected") == []


@pytest.mark.slow
async def test_file_swap_then_alter_role(rig: Rig) -> None:
    """File first: the new DSN is refused and retried, the old session carries on; after
    ALTER ROLE the retry succeeds."""
    before = await rig.one_backend()
    rig.volume.write_dsn(rig.new_dsn + "\n")
    await wait_until_async(lambda: rig.watcher.reloads["rejected"] == 1, timeout=SLACK)
    # Retried after growing delays while pending, yet one file content is counted once.
    await rig.recorder.more_passes(3)
    assert rig.watcher.pending == rig.new_dsn
    assert rig.watcher.reloads["rejected"] == 1
    assert rig.watcher.current == rig.old_dsn
    assert not rig.watcher.last_reload_ok
    assert (await rig.one_backend())["pid"] == before["pid"]
    # Checks went on passing, on the old session, while the candidate was being refused.
    assert rig.recorder.failures() == []
    altered_at = rig.alter_password()
    await wait_until_async(lambda: rig.watcher.reloads["applied"] == 1, timeout=SLACK)
    await rig.assert_rotated(before, altered_at)
    [rejected] = rig.log.events("credentials.rejected")  # once, however many retries
    assert rejected["reason"] == "auth_failed"
    assert rejected["check"] == "primary"


@pytest.mark.slow
async def test_invalid_new_file_keeps_the_last_good_dsn(rig: Rig) -> None:
    """A malformed new file: warned once, flagged, checks pass on; a good file later rotates."""
    before = await rig.one_backend()
    # The password is in it, but the scheme is wrong: refused without being quoted.
    rig.volume.write_dsn(f"mysql://{ROLE}:{NEW_PASSWORD}@{rig.pg.host}:{rig.pg.port}/postgres")
    await wait_until_async(lambda: rig.watcher.reloads["invalid"] == 1, timeout=SLACK)
    await rig.recorder.more_passes(5)
    assert not rig.watcher.last_reload_ok
    assert rig.watcher.current == rig.old_dsn
    assert rig.watcher.reloads == {"applied": 0, "invalid": 1, "rejected": 0}
    assert (await rig.one_backend())["pid"] == before["pid"]
    assert rig.recorder.failures() == []
    [warning] = rig.log.events("credentials.reload_failed")
    assert warning["level"] == "warning"
    assert warning["check"] == "primary"
    assert "scheme" in warning["problem"]
    rig.assert_no_new_password_logged()
    # Fixed file, and the server told: the rotation completes from the last good state.
    altered_at = rig.alter_password()
    rig.volume.write_dsn(rig.new_dsn)
    await wait_until_async(lambda: rig.watcher.reloads["applied"] == 1, timeout=SLACK)
    await rig.assert_rotated(before, altered_at)


# ---- the real process ------------------------------------------------------------------------


@pytest.mark.slow
def test_process_rotates_without_a_failed_probe(pg_private: PostgresServer, tmp_path: Path) -> None:
    """The real sidecar on SIDECAR_DATABASE_URL_FILE: /ready stays 200 through a rotation, the
    reload metrics count it, and the new password is redacted from a crash message."""
    pg = pg_private
    pg.create_role(ROLE, OLD_PASSWORD)
    volume = SecretVolume(tmp_path / "secret")
    volume.write_dsn(pg.dsn(ROLE, OLD_PASSWORD) + "\n")
    new_dsn = pg.dsn(ROLE, NEW_PASSWORD)
    fault = tmp_path / "fault"
    env = {"SIDECAR_DATABASE_URL_FILE": str(volume.path()), "SIDECAR_CHECK_TIMEOUT": "4"}
    with SidecarProcess(env, log_dir=tmp_path, fault_file=fault) as sidecar:
        sidecar.wait_listening()
        sidecar.wait_status("/ready", 200, within=SLACK)

        def reloads(outcome: str) -> float:
            return sidecar.metric(
                "health_sidecar_dsn_reloads_total", check="postgres", outcome=outcome
            )

        with Sampler(sidecar, "/ready", period=0.05) as sampler:
            volume.write_dsn(new_dsn + "\n")
            timed_until(lambda: reloads("rejected") >= 1, timeout=SLACK, message="refused")
            assert (
                sidecar.metric("health_sidecar_dsn_last_reload_successful", check="postgres") == 0
            )
            pg.alter_password(ROLE, NEW_PASSWORD)
            timed_until(lambda: reloads("applied") == 1, timeout=SLACK, message="applied")
            assert (
                sidecar.metric("health_sidecar_dsn_last_reload_successful", check="postgres") == 1
            )
            pg.wait_for_sessions(1)
        assert sampler.statuses() == {200}, sampler.samples
        failed = sidecar.metrics().get(
            ("health_sidecar_check_total", frozenset({("check", "postgres"), ("outcome", "fail")}))
        )
        assert not failed
        # Whatever message carries the new DSN now, the log line does not.
        set_fault(fault, f"raise could not use {new_dsn} (password {NEW_PASSWORD})")
        sidecar.wait_event("check.crashed", timeout=SLACK)
        set_fault(fault, "")
        assert sidecar.stop() == 0
    [crashed] = sidecar.events("check.crashed")
    assert logs.REDACTED in crashed["error"]
    assert sidecar.events("credentials.reloaded", check="postgres")
    for form in (NEW_PASSWORD, quote(NEW_PASSWORD, safe=""), OLD_PASSWORD):
        assert form not in sidecar.log_text(), sidecar.tail()
