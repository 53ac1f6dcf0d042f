"""The real sidecar against a real Patroni cluster: does `/ready` tell the truth through the
lifecycles a production PostgreSQL meets (switchover, failover, promotion, a read-only flip, a
server that closes idle sessions, DSN rotations)?

One cluster (tests/support/patroni.py: two members and an etcd) serves the whole run; the
`patroni` fixture hands it over settled and brings it back to a primary and a streaming replica
after each test. Each test runs `python -m sidecar` with a multi-host DSN over both members (in
a file, as a mounted Secret would hold it) and samples, at about 10 Hz, the sidecar's `/ready`
and the cluster's own view (Patroni's REST `/primary` and `/replica` on each member). It bounds
the longest window in which `/ready` is wrong (ready while no acceptable server exists, or not
ready while one does): a few seconds plus one check interval, never "no blip at all", since the
answer is by design one check old. Tests about a behaviour use short intervals; the switchover
and failover tests use the defaults, the experience nobody tuned.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Final

import pytest
from sidecar_proc import SidecarProcess
from support.patroni import PatroniCluster
from support.windows import Watch

pytestmark = [
    pytest.mark.slow,
    # In CI (CI=true) .ci/run installs them: there a missing tool is a failure, not a skip.
    pytest.mark.skipif(
        os.environ.get("CI") != "true"
        and (shutil.which("patroni") is None or shutil.which("etcd") is None),
        reason="patroni/etcd not installed: bash .ci/ha-tools.sh",
    ),
]

# Short timings for tests about a behaviour. Timeout 2 s: Patroni's members answer within
# milliseconds, but a loaded CI machine may not.
SHORT_ENV: Final[Mapping[str, str]] = {
    "SIDECAR_CHECK_INTERVAL": "1",
    "SIDECAR_CHECK_TIMEOUT": "2",
    "SIDECAR_BACKOFF_MAX": "2",
    "SIDECAR_DRAIN_SECONDS": "0",
    "SIDECAR_LOG_LEVEL": "debug",
}
# The contract's defaults (interval 5 s, timeout 2 s, backoff up to 30 s), only quicker to stop.
DEFAULT_ENV: Final[Mapping[str, str]] = {"SIDECAR_DRAIN_SECONDS": "0"}
DEFAULT_INTERVAL: Final = 5.0
# On top of one check interval: "a few seconds" for the sidecar to see a change and act on it.
SLACK_SECONDS: Final = 5.0
# How long a test holds a state (no primary, no standby, read-only) so that a sidecar that never
# notices it shows a window longer than the bound, not one cut short by the next event.
READY_TIMEOUT: Final = 60.0
FAILOVER_TIMEOUT: Final = 60.0


def bound(interval: float) -> float:
    return interval + SLACK_SECONDS


def write_dsn(path: Path, dsn: str) -> None:
    """Replace the DSN file in one rename, as a Secret volume's symlink swap does."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dsn + "\n")
    tmp.replace(path)


@contextlib.contextmanager
def sidecar_on(
    dsn_file: Path, tmp_path: Path, env: Mapping[str, str], name: str = "sidecar"
) -> Iterator[SidecarProcess]:
    """A real sidecar reading `dsn_file`, ready before the block starts."""
    with SidecarProcess(
        {"SIDECAR_DATABASE_URL_FILE": str(dsn_file), **env},
        defaults={},
        log_dir=tmp_path,
        name=name,
    ) as sidecar:
        sidecar.wait_listening()
        wait_for(lambda: sidecar.status("/ready") == 200, READY_TIMEOUT, "sidecar ready", sidecar)
        yield sidecar


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, sidecar: SidecarProcess | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            tail = f"\n{sidecar.tail()}" if sidecar is not None else ""
            raise AssertionError(f"{what}: not within {timeout:g}s{tail}")
        time.sleep(0.1)


def agree(watch: Watch, sidecar: SidecarProcess, seconds: float) -> None:
    """Wait (at most `seconds`) until the sidecar's answer matches the truth and holds for 1 s;
    no failure here: the windows say what went wrong."""
    deadline = time.monotonic() + seconds
    agreed_since: float | None = None
    while time.monotonic() < deadline:
        truth = watch.truth_now()
        answer = sidecar.status("/ready") == 200
        if truth is not None and truth == answer:
            agreed_since = agreed_since or time.monotonic()
            if time.monotonic() - agreed_since >= 1.0:
                return
        else:
            agreed_since = None
        time.sleep(0.1)


def assert_window(watch: Watch, limit: float, sidecar: SidecarProcess) -> None:
    longest = watch.longest()
    assert longest < limit, (
        f"/ready was wrong for {longest:.1f}s in one window (bound {limit:g}s)\n"
        f"{watch.describe()}\n{sidecar.tail(2000)}"
    )


def ready_probe(sidecar: SidecarProcess) -> Callable[[], bool]:
    return lambda: sidecar.status("/ready") == 200


# ---- role changes ------------------------------------------------------------------------------


def test_switchover_under_a_read_write_dsn_is_followed_within_the_bound(
    patroni: PatroniCluster, tmp_path: Path
) -> None:
    """Default settings, read-write DSN over both members: a Patroni switchover leaves /ready
    wrong for less than one check interval plus a few seconds."""
    dsn_file = tmp_path / "dsn"
    write_dsn(dsn_file, patroni.dsn(target_session_attrs="read-write"))
    with sidecar_on(dsn_file, tmp_path, DEFAULT_ENV) as sidecar:
        with Watch(ready_probe(sidecar), patroni.has_primary) as watch:
            time.sleep(1.0)
            patroni.switchover()
            # At least one check after the switchover, which met the old primary's end.
            time.sleep(DEFAULT_INTERVAL + 2)
            agree(watch, sidecar, bound(DEFAULT_INTERVAL) + 10)
        assert_window(watch, bound(DEFAULT_INTERVAL), sidecar)


def test_failover_after_kill_9_is_followed_within_the_bound(
    patroni: PatroniCluster, tmp_path: Path
) -> None:
    """Default settings, read-write DSN: `kill -9` of the leader's Patroni and postmaster; /ready
    is wrong for less than one check interval plus a few seconds, before and after the replica's
    promotion (the session-attrs failures meanwhile must not delay the recovery)."""
    dsn_file = tmp_path / "dsn"
    write_dsn(dsn_file, patroni.dsn(target_session_attrs="read-write"))
    with sidecar_on(dsn_file, tmp_path, DEFAULT_ENV) as sidecar:
        with Watch(ready_probe(sidecar), patroni.has_primary) as watch:
            time.sleep(1.0)
            killed = patroni.kill_leader()
            survivor = patroni.other(killed)
            wait_for(survivor.is_primary, FAILOVER_TIMEOUT, "the replica promoted")
            time.sleep(DEFAULT_INTERVAL + 2)  # at least one check on the new primary
            agree(watch, sidecar, bound(DEFAULT_INTERVAL) + 10)
        assert_window(watch, bound(DEFAULT_INTERVAL), sidecar)
