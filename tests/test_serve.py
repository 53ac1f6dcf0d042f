"""The README's run command, `bash .ci/serve`, driven the way a person does.

A fresh copy of the tree's tracked files (no .venv, no state), `bash .ci/serve`, then a signal
to the script's PID (or Ctrl-C to its process group): the sidecar must drain, the throwaway
PostgreSQL must stop, and no process, port or data directory may be left. Every start here runs
with no package index reachable: once `.venv` matches the tree, starting needs no network.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import REPO, free_port, wait_until

VENV = Path(sys.prefix)
# pip would fail at once with these: no index, no links, an index URL where nothing listens.
OFFLINE = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "", "PIP_INDEX_URL": "http://127.0.0.1:9/"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tracked files of this tree in a new directory, with .venv the suite's own venv."""
    if not (VENV / ".health-sidecar-installed").is_file():
        pytest.fail(f"{VENV} has no install stamp: .ci/setup did not write it")
    target = tmp_path_factory.mktemp("clone")
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True
    ).stdout.split(b"\0")
    for name in filter(None, (raw.decode() for raw in listed)):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    # Installing the project again would need the network and time; a venv that matches
    # pyproject.toml is what a second start finds, which is what these tests are about.
    (target / ".venv").symlink_to(VENV)
    return target


@dataclass
class Served:
    script: subprocess.Popen[bytes]
    port: int
    sidecar_pid: int
    postmaster_pid: int
    data: Path
    log: Path
    errors: Path


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes; only our own children linger as zombies.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        # As servers bind (aiohttp too): connections in TIME_WAIT do not hold the port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))  # noqa: S104 -- the sidecar's own wildcard address
        except OSError:
            return False
    return True


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture
def served(clone: Path, tmp_path: Path) -> Iterator[Served]:
    """`bash .ci/serve` from the clone, offline, until /ready answers 200."""
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"SIDECAR_DATABASE_URL", "SIDECAR_DATABASE_URL_FILE", "PGHOST"}
    }
    env |= OFFLINE | {"SIDECAR_PORT": str(port), "SIDECAR_DRAIN_SECONDS": "1"}
    log, errors = tmp_path / "stdout", tmp_path / "stderr"
    with log.open("wb") as out, errors.open("wb") as err:
        # Its own process group, like a command typed at a terminal: Ctrl-C reaches the group.
        script = subprocess.Popen(
            ["bash", ".ci/serve", "--check-interval", "0.5"],
            cwd=clone,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    try:
        wait_until(lambda: ready(port) or script.poll() is not None, timeout=90)
        assert script.poll() is None, f"serve exited {script.returncode}: {errors.read_text()}"
        text = errors.read_text()
        found = re.search(r"data in (\S+),", text)
        pid = re.search(r"health-sidecar: pid (\d+)", text)
        assert found, text
        assert pid, text
        data = Path(found.group(1))
        postmaster = int((data / "db" / "postmaster.pid").read_text().split()[0])
        yield Served(script, port, int(pid.group(1)), postmaster, data, log, errors)
    finally:
        if script.poll() is None:
            # The script's own clean-up first (it stops PostgreSQL); SIGKILL only if it hangs.
            os.killpg(script.pid, signal.SIGTERM)
            try:
                script.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(script.pid, signal.SIGKILL)
                script.wait()


def assert_nothing_left(served: Served) -> None:
    assert not alive(served.sidecar_pid), "the sidecar outlived the script"
    assert not alive(served.postmaster_pid), "PostgreSQL outlived the script"
    assert not served.data.exists(), "the data directory is still there"
    assert port_free(served.port), "the sidecar's port is still taken"
    events = served.log.read_text()
    assert '"event": "sidecar.draining"' in events, events
    assert '"event": "sidecar.stopped"' in events, events


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_signal_to_the_script_pid_stops_sidecar_and_database(
    served: Served, sig: signal.Signals, code: int
) -> None:
    """SIGTERM or SIGHUP to the script's PID drains the sidecar and removes the database."""
    served.script.send_signal(sig)
    assert served.script.wait(timeout=60) == code
    assert_nothing_left(served)


def test_ctrl_c_to_the_process_group_stops_both(served: Served) -> None:
    """Ctrl-C (SIGINT to the foreground group) drains once and removes the database."""
    os.killpg(served.script.pid, signal.SIGINT)
    assert served.script.wait(timeout=60) == 130
    assert_nothing_left(served)
    # One signal reached the sidecar: its drain ran to the end, not cut short.
    assert "sidecar.drain_cut_short" not in served.log.read_text()


def test_readme_commands_work_as_typed(served: Served, clone: Path) -> None:
    """The commands the README's set-up gives after `bash .ci/serve` succeed from the clone."""
    readme = (clone / "README.md").read_text()
    block = re.search(r"another terminal:\n\n```sh\n(.*?)```", readme, re.S)
    assert block, "README set-up lost its follow-up commands"
    commands = [line for line in block.group(1).splitlines() if line.strip()]
    assert any("probe ready" in c for c in commands)
    for command in commands:
        typed = command.replace(":8081", f":{served.port}")
        result = subprocess.run(
            ["bash", "-c", typed],
            cwd=clone,
            env=os.environ | {"SIDECAR_PORT": str(served.port)},
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, (command, result.stdout, result.stderr)
    served.script.send_signal(signal.SIGTERM)
    assert served.script.wait(timeout=60) == 143
    assert_nothing_left(served)
