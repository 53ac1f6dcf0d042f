"""The command line as users meet it: exit codes, one-line errors, flags over env, the probe."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from support import free_port

CLI = [sys.executable, "-m", "sidecar"]


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SIDECAR_", "PG"))}
    # A database host, so that a refusal under test is the only line (none is a refusal too).
    clean["PGHOST"] = "127.0.0.1"
    return subprocess.run(
        [*CLI, *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_bad_setting_exits_2_with_one_line_naming_it() -> None:
    """A bad variable: exit 2, exactly one stderr line naming it, no traceback, no stdout."""
    result = run([], {"SIDECAR_CHECK_INTERVAL": "soon"})
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert "SIDECAR_CHECK_INTERVAL" in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_every_problem_gets_its_own_line() -> None:
    """Three bad variables give three lines, each naming its variable."""
    result = run(
        [],
        {
            "SIDECAR_PORT": "http",
            "SIDECAR_DATABASE_URL": "mysql://u:secretpw@h/db",
            "SIDECAR_LOG_LEVEL": "chatty",
        },
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 3
    for name in ("SIDECAR_PORT", "SIDECAR_DATABASE_URL", "SIDECAR_LOG_LEVEL"):
        assert sum(name + ":" in line or name + " " in line for line in lines) == 1, name
    assert "secretpw" not in result.stderr


def test_flags_win_over_the_environment() -> None:
    """A good flag overrides a bad variable; a bad flag is named as the flag."""
    overridden = run(
        ["--check-interval", "2", "--log-format", "xml"], {"SIDECAR_CHECK_INTERVAL": "x"}
    )
    assert overridden.returncode == 2
    assert "SIDECAR_CHECK_INTERVAL" not in overridden.stderr  # the flag's good value won
    assert "SIDECAR_LOG_FORMAT (--log-format)" in overridden.stderr


def test_unknown_flag_is_one_line_and_exit_2() -> None:
    """An unknown flag is refused with exit 2 and a single line."""
    result = run(["--check-intervall", "2"])
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert "--check-intervall" in result.stderr


def test_version_flag_prints_the_version() -> None:
    """--version prints the program name and version and exits 0."""
    result = run(["--version"])
    assert result.returncode == 0
    assert result.stdout.startswith("health-sidecar ")


@pytest.fixture
def serving_sidecar() -> Iterator[int]:
    """A sidecar subprocess against a closed port: alive, never ready."""
    port = free_port()
    dead_db = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SIDECAR_", "PG"))}
    env = {
        **clean,
        "SIDECAR_PORT": str(port),
        "SIDECAR_HOST": "127.0.0.1",
        "SIDECAR_DATABASE_URL": f"postgresql://u:p@127.0.0.1:{dead_db}/db",
        "SIDECAR_DRAIN_SECONDS": "0",
    }
    proc = subprocess.Popen(CLI, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while run(["probe", "health", "--port", str(port)]).returncode != 0:
            assert proc.poll() is None, "sidecar exited"
            assert time.monotonic() < deadline, "sidecar never listened"
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_exec_probe_reports_each_endpoint(serving_sidecar: int) -> None:
    """probe health exits 0; probe ready and startup exit 1 while the database is down."""
    port = str(serving_sidecar)
    assert run(["probe", "health", "--port", port]).returncode == 0
    ready = run(["probe", "ready", "--port", port])
    assert ready.returncode == 1
    assert "503" in ready.stderr
    assert run(["probe", "startup", "--port", port]).returncode == 1


def test_exec_probe_reads_the_port_from_the_environment(serving_sidecar: int) -> None:
    """Without --port the probe uses SIDECAR_PORT, like the server."""
    assert run(["probe", "health"], {"SIDECAR_PORT": str(serving_sidecar)}).returncode == 0


def test_exec_probe_fails_when_nothing_listens() -> None:
    """A probe against a closed port exits 1 promptly, naming the endpoint."""
    result = run(["probe", "health", "--port", str(free_port()), "--timeout", "1"])
    assert result.returncode == 1
    assert result.stderr.startswith("health:")


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["probe", "ready"], {"SIDECAR_PORT": "eighty"}, "SIDECAR_PORT"),
        (["probe", "ready", "--port", "0"], {}, "--port"),
        (["probe", "ready", "--timeout", "-1"], {}, "--timeout"),
        (["probe", "alive"], {}, "alive"),
        (["probe", "ready", "--host", "a b"], {}, "--host"),
        (["probe", "ready", "--host", "a\x01b"], {}, "--host"),
        (["probe", "ready"], {"SIDECAR_HOST": "a\tb"}, "SIDECAR_HOST"),
    ],
)
def test_exec_probe_bad_arguments_exit_2(args: list[str], env: dict[str, str], named: str) -> None:
    """A bad probe argument or port exits 2 with one line naming it."""
    result = run(args, env)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert named in result.stderr


def test_a_probe_usage_error_points_at_the_probe_help() -> None:
    """A usage error of `probe` names the probe command and its own --help."""
    result = run(["probe", "alive"])
    assert result.stderr.startswith("health-sidecar probe: argument endpoint: ")
    assert result.stderr.endswith(" (see health-sidecar probe --help)\n")


def test_help_lists_the_config_file_flag() -> None:
    """--help shows --config-file and its variable, like every other setting."""
    result = run(["--help"])
    assert result.returncode == 0
    assert "--config-file" in result.stdout
    assert "[SIDECAR_CONFIG_FILE]" in " ".join(result.stdout.split())


def test_config_file_flag_wins_over_the_variable() -> None:
    """--config-file replaces SIDECAR_CONFIG_FILE, and its problem names the flag."""
    result = run(
        ["--config-file", "/nonexistent/flag.yaml"],
        {"SIDECAR_CONFIG_FILE": "/nonexistent/variable.yaml"},
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "health-sidecar: bad setting: SIDECAR_CONFIG_FILE (--config-file): "
        "file '/nonexistent/flag.yaml' does not exist"
    ]


@pytest.mark.parametrize(
    ("listen", "dial"),
    [("::", "127.0.0.1"), ("0.0.0.0", "127.0.0.1"), ("[::]", "127.0.0.1"), ("::1", "::1"),  # noqa: S104 -- values, nothing binds
     ("10.1.2.3", "10.1.2.3"), ("sidecar.local", "sidecar.local")],
)  # fmt: skip
def test_probe_dials_ipv4_loopback_for_any_wildcard(listen: str, dial: str) -> None:
    """A wildcard listen address is dialled on 127.0.0.1, which `::` (dual-stack or IPv4-only
    where the kernel lacks IPv6) and `0.0.0.0` both answer; a named address as given."""
    from sidecar.probe import connect_host  # noqa: PLC0415 -- the CLI's own module

    assert connect_host(listen) == dial


def test_bracketed_ipv6_listen_address_exits_2_naming_the_host() -> None:
    """--host [::1] (a URL's form) is refused at start with one line naming the flag, not a
    listen failure (exit 1) after start: the address is written without brackets."""
    result = run(["--host", "[::1]", "--port", str(free_port())])
    assert result.returncode == 2, result
    assert result.stderr.splitlines() == [
        "health-sidecar: bad setting: SIDECAR_HOST (--host): not a host name or address: '[::1]'"
    ]
