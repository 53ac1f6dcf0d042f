"""Redaction by structure: a password that is also a word never rewrites the logs, and no
password shows, whatever it is: `sidecar`, `postgres`, `ready`, `a`, `p@ss/w0rd`.

The first tests drive the real logging pipeline in memory (both formats); the last ones run the
real sidecar against real PostgreSQL through a pass, a failed login, a crash with the DSN and the
password in its message (traceback included), a dying probe loop, then search every log line,
response body and metric.
"""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import pytest
import structlog
from sidecar_proc import SidecarProcess, set_fault
from support import REPO
from support.pg import PostgresServer
from support.secretvolume import captured_logs

from sidecar import logs
from sidecar.checkspec import DatabaseTarget
from sidecar.logs import REDACTED, VOCABULARY_KEYS

PASSWORDS: Final = ["sidecar", "postgres", "ready", "a", "p@ss/w0rd"]
ROLE: Final = "tracer"
SLACK: Final = 20.0
FAST: Final = {
    "SIDECAR_CHECK_INTERVAL": "0.3",
    "SIDECAR_CHECK_TIMEOUT": "1",
    "SIDECAR_BACKOFF_MAX": "0.5",
    "SIDECAR_LOG_LEVEL": "debug",
    "SIDECAR_DRAIN_SECONDS": "0",
}
README_EVENTS: Final = frozenset(
    re.findall(
        r"^\| `([a-z]+\.[a-z_]+)` \|",
        (REPO / "README.md").read_text(),
        re.M,
    )
)
# In bodies and metrics, what is ours: the check's name, the handler label, the fixed help texts.
VOCABULARY_IN_BODIES: Final = (
    r'"postgres"|"postgres: |check="postgres"|handler="[a-z]+"|^# HELP .*$'
)
# A password is shown when it stands as a word of its own in text: not inside a longer word.
WORD: Final = r"\w.-"


def dsn_for(password: str, port: int = 5432) -> str:
    return f"postgresql://{ROLE}:{quote(password, safe='')}@127.0.0.1:{port}/postgres"


def forms(password: str) -> set[str]:
    return {password, quote(password, safe="")}


URL: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*")


def shown_in(text: str, password: str) -> list[str]:
    """Places where `password` (raw or encoded) shows: as a URL's password or a `password=`
    value, or, outside URLs (whose scheme, hosts and database are no secret), as a word of
    its own in text."""
    found = []
    for form in forms(password):
        secret = re.escape(form)
        for url in URL.findall(text):
            if re.search(rf":{secret}@|password={secret}", url):
                found.append(url)
        outside = URL.sub(" ", text)
        for match in re.finditer(rf"(?<![{WORD}]){secret}(?![{WORD}])|password={secret}", outside):
            found.append(outside[max(0, match.start() - 60) : match.end() + 60])
    return found


def leaks_in_event(event: dict[str, Any], password: str) -> list[str]:
    """Every value outside the vocabulary (and every key) where the password shows."""
    found: list[str] = []

    def visit(key: str, value: Any) -> None:
        found.extend(shown_in(key, password) if password not in key.split("_") else [])
        if key in VOCABULARY_KEYS and key != "event":
            return
        if isinstance(value, dict):
            for k, v in value.items():
                visit(k, v)
        elif isinstance(value, list):
            for v in value:
                visit(key, v)
        elif isinstance(value, str) and not (key == "event" and value in README_EVENTS):
            if key == "exception":  # a traceback's frames are our code: only messages count
                value = "\n".join(line for line in value.splitlines() if not line.startswith("  "))
            found.extend(shown_in(value, password))

    for key, value in event.items():
        visit(key, value)
    return found


def assert_vocabulary_intact(event: dict[str, Any]) -> None:
    """The event name is a README event; check names, reasons, levels hold no redaction."""
    if event.get("logger") is None:  # ours, not a library's message
        assert event["event"] in README_EVENTS, event
    for key in ("check", "reason", "level", "kind", "to", "from"):
        assert REDACTED not in str(event.get(key, "")), event
    assert event.get("check") in (None, "postgres"), event


# ---- the pipeline, in memory -------------------------------------------------------------------


def _fail_once(dsn: str) -> None:
    raise OSError(f"inner {dsn}")


def _fail_twice(dsn: str, password: str) -> None:
    """A chained exception, both messages holding a secret."""
    try:
        _fail_once(dsn)
    except OSError as inner:
        raise RuntimeError(f"outer password={password}") from inner


def log_everything(password: str) -> None:
    """Every shape of line the sidecar writes that could carry a password."""
    dsn = dsn_for(password)
    log = structlog.get_logger("sidecar.loop").bind(check="postgres")
    log.info("sidecar.starting", config_file="/etc/health-sidecar/checks.yaml")
    log.warning("check.state_changed", to="failing", reason="auth_failed", details=None)
    log.error("check.crashed", error_type="RuntimeError", error=f"bad {dsn} and {password} too")
    try:
        _fail_twice(dsn, password)
    except RuntimeError as exc:
        log.debug("check.crashed_traceback", exc_info=exc)
    other = f"postgres://{ROLE}:{quote(password, safe='')}@h1:5432,h2:5433/app?sslmode=require"
    log.error("sidecar.listen_failed", host="::", port=8081, error=f"multi-host {other}")
    logging.getLogger("asyncio").error("a library says %s", dsn, exc_info=RuntimeError(dsn))


@pytest.mark.parametrize("password", PASSWORDS)
def test_json_lines_keep_every_name_and_show_no_password(password: str) -> None:
    """JSON lines: event and check names as written, no password in any message or traceback."""
    with captured_logs(DatabaseTarget(dsn=dsn_for(password)).secrets()) as captured:
        log_everything(password)
    events = captured.events()
    assert len(events) == 6
    for event in events:
        assert_vocabulary_intact(event)
        assert leaks_in_event(event, password) == [], event
    [traceback] = [e for e in events if e["event"] == "check.crashed_traceback"]
    # The frames stay readable: the file names are ours, whatever the password is.
    assert "test_redaction.py" in traceback["exception"]
    assert "The above exception was the direct cause" in traceback["exception"]
    [crashed] = [e for e in events if e["event"] == "check.crashed"]
    assert crashed["error"] == f"bad {REDACTED} and {REDACTED} too"
    [multi] = [e for e in events if e["event"] == "sidecar.listen_failed"]
    assert multi["error"] == (
        f"multi-host postgres://{ROLE}:{REDACTED}@h1:5432,h2:5433/app?sslmode=require"
    )


@pytest.mark.parametrize("password", PASSWORDS)
def test_console_lines_keep_every_name_and_show_no_password(password: str) -> None:
    """The console format: the same names and no password, tracebacks included."""
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logs.configure(
        level="debug",
        fmt="console",
        secrets=DatabaseTarget(dsn=dsn_for(password)).secrets(),
        stream=stream,
    )
    try:
        log_everything(password)
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)
    text = stream.getvalue()
    for name in ("sidecar.starting", "check.state_changed", "check.crashed_traceback"):
        assert name in text
    assert "check=postgres" in text
    assert "test_redaction.py" in text  # frames of the traceback kept
    # Names and the fixed vocabulary are left out of the search: they are not the password.
    free = re.sub(r"check=postgres|sidecar\.[a-z_]+|check\.[a-z_]+|/etc/health-sidecar", "", text)
    free = re.sub(r'File "[^"]*"', "", free)
    assert shown_in(free, password) == [], text


def test_a_password_that_is_a_path_segment_is_scrubbed_there_too() -> None:
    """A path segment equal to the password goes, a longer word containing it stays."""
    with captured_logs(DatabaseTarget(dsn=dsn_for("sidecar")).secrets()) as captured:
        structlog.get_logger("sidecar").info(
            "sidecar.starting", config_file="/etc/sidecar/health-sidecar/checks.yaml"
        )
    [event] = captured.events()
    assert event["config_file"] == f"/etc/{REDACTED}/health-sidecar/checks.yaml"


# ---- the real process, against real PostgreSQL -------------------------------------------------


@pytest.fixture
def sidecars() -> Iterator[list[SidecarProcess]]:
    started: list[SidecarProcess] = []
    yield started
    for sidecar in started:
        sidecar.stop()


def wait_change(sidecar: SidecarProcess, to: str, reason: str | None, after: int) -> int:
    deadline = time.monotonic() + SLACK
    while True:
        changes = sidecar.events("check.state_changed")
        if any(c["to"] == to and c["reason"] == reason for c in changes[after:]):
            return len(changes)
        sidecar.assert_alive()
        assert time.monotonic() < deadline, f"no change to {to}/{reason}\n{sidecar.tail()}"
        time.sleep(0.05)


def bodies(sidecar: SidecarProcess) -> list[str]:
    paths = ["/ready?verbose", "/health?verbose", "/startup?verbose", "/ready/postgres?verbose"]
    found = [sidecar.get(path).body.decode() for path in paths]
    found.append(sidecar.get("/metrics").body.decode())
    return found


@pytest.mark.slow
@pytest.mark.parametrize("password", PASSWORDS)
def test_real_sidecar_logs_keep_names_and_hide_the_password(
    password: str,
    pg_private: PostgresServer,
    sidecars: list[SidecarProcess],
    tmp_path: Path,
) -> None:
    """Pass, failed login, crash with the DSN and password in its message, a dying loop: every
    event name intact and the password nowhere in logs, bodies or metrics."""
    pg = pg_private
    pg.create_role(ROLE, password)
    dsn = dsn_for(password, pg.port)
    fault = tmp_path / "fault"
    sidecar = SidecarProcess(
        {"SIDECAR_DATABASE_URL": dsn}, defaults=FAST, log_dir=tmp_path, fault_file=fault
    )
    sidecars.append(sidecar)
    sidecar.start()
    sidecar.wait_listening()
    seen = wait_change(sidecar, "passing", None, 0)
    outputs = bodies(sidecar)
    pg.alter_password(ROLE, password + "-rotated")
    pg.terminate()
    seen = wait_change(sidecar, "failing", "auth_failed", seen)
    outputs += bodies(sidecar)
    pg.alter_password(ROLE, password)
    seen = wait_change(sidecar, "passing", None, seen)
    set_fault(fault, f"raise could not use {dsn} (the password is {password} )")
    seen = wait_change(sidecar, "failing", "internal_error", seen)
    outputs += bodies(sidecar)
    assert sidecar.events("check.crashed_traceback")
    set_fault(fault, f"die {dsn} {password}")
    sidecar.wait_event("prober.stopped", timeout=SLACK)
    outputs += bodies(sidecar)
    assert sidecar.stop() == 0
    assert sidecar.non_json_lines() == []
    events = sidecar.events()
    names = {event["event"] for event in events if event.get("logger") is None}
    assert {"sidecar.starting", "sidecar.listening", "check.state_changed"} <= names
    assert {"check.crashed", "prober.stopped", "sidecar.stopped"} <= names
    for event in events:
        assert_vocabulary_intact(event)
        assert leaks_in_event(event, password) == [], event
    # The fault raises at every check until it turns into "die": one crash or more.
    crashes = sidecar.events("check.crashed")
    assert crashes
    for crashed in crashes:
        assert crashed["error"] == f"could not use {REDACTED} (the password is {REDACTED} )"
    assert sidecar.stderr() == ""
    for body in outputs:
        # The check's name, and the metrics' fixed help texts, are ours, not the password.
        ours = re.sub(VOCABULARY_IN_BODIES, "", body, flags=re.M)
        assert shown_in(ours, password) == [], body[:300]
        assert f"{ROLE}:" not in body


@pytest.mark.parametrize("where", ["SIDECAR_DATABASE_URL", "SIDECAR_DATABASE_URL_FILE"])
def test_raw_special_characters_are_refused_without_showing_them(
    where: str, tmp_path: Path
) -> None:
    """`p@ss/w0rd` written raw in the DSN: exit 2, one line naming the setting, no password."""
    dsn = f"postgresql://{ROLE}:p@ss/w0rd@127.0.0.1:5432/postgres"
    env = {"PATH": "/usr/bin:/bin"}
    if where == "SIDECAR_DATABASE_URL":
        env[where] = dsn
    else:
        path = tmp_path / "dsn"
        path.write_text(dsn)
        env[where] = str(path)
    result = subprocess.run(
        [sys.executable, "-m", "sidecar"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"health-sidecar: bad setting: {where}: ")
    for piece in ("p@ss", "ss/w0rd", "w0rd"):
        assert piece not in line
    assert json.dumps(result.stdout) == '""'


def test_a_value_under_a_password_key_goes_even_when_unknown() -> None:
    """`password=`, `sslpassword` or a URL's password no redactor was told about still goes."""
    with captured_logs(()) as captured:
        structlog.get_logger("sidecar").warning(
            "check.crashed",
            sslpassword="never-registered",
            error="host=db password='never registered' user=app, "
            "also postgresql://app:never-registered@db/app",
        )
    [event] = captured.events()
    assert event["sslpassword"] == REDACTED
    assert event["error"] == (
        f"host=db password={REDACTED} user=app, also postgresql://app:{REDACTED}@db/app"
    )
