"""The real sidecar as a subprocess: start it with an environment, read its logs, stop it by PID.

`SidecarProcess(env)` runs `python -m sidecar` (the same code as the `health-sidecar` script)
on 127.0.0.1 and a free port, with `env` over `DEFAULT_ENV` (small timings, debug logs; pass
`defaults={}` for the contract's defaults) and PATH, and nothing else from the test runner's
environment (no stray PGPASSWORD or SIDECAR_PORT). stdout (JSON log lines) and stderr go to two
files in `log_dir`; `events()` parses the former. `stop()` sends SIGTERM to the PID it started
(SIGKILL after a bound). Every wait is bounded and every failure message carries the logs' tail.

    with SidecarProcess({"SIDECAR_DATABASE_URL": pg.dsn()}, log_dir=tmp_path) as sidecar:
        sidecar.wait_listening()
        assert sidecar.get("/ready").status == 200
        assert sidecar.metric("health_sidecar_check_up", check="postgres") == 1

Fault injection inside the sidecar (`fault_file=path`): the process is started through this
module's `__main__`, which wraps `PostgresCheck.run` to read `path` before every check and obey
it; the test writes the file to switch faults on and off (`set_fault`). Lines:

- empty or missing: no fault, the real check runs;
- `raise <message>`: the check raises RuntimeError(message) (a bug in a check);
- `die`: the check raises a BaseException that no `except Exception` stops: the probe loop dies;
- `stall`: the check swallows every cancellation and waits until the line changes (or 120 s):
  the probe loop is wedged while the event loop still serves requests.

Nothing else about the process differs: same entry point, same settings, same server.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from prometheus_client.parser import text_string_to_metric_families
from support import LOOPBACK, SLACK, free_port, timed_until

__all__ = [
    "DEFAULT_ENV",
    "Measurements",
    "Reply",
    "Sampler",
    "SidecarExited",
    "SidecarProcess",
    "SidecarStarter",
    "set_fault",
    "timed_until",
]

# Small timings so faults show within seconds; generous waits on top of them in the tests.
DEFAULT_ENV: Final[Mapping[str, str]] = {
    "SIDECAR_CHECK_INTERVAL": "0.5",
    "SIDECAR_CHECK_TIMEOUT": "1",
    "SIDECAR_BACKOFF_MAX": "2",
    "SIDECAR_DRAIN_SECONDS": "0",
    "SIDECAR_LOG_LEVEL": "debug",
}
LISTEN_TIMEOUT_SECONDS: Final = 30.0
STOP_TIMEOUT_SECONDS: Final = 15.0
REQUEST_TIMEOUT_SECONDS: Final = 5.0
STALL_LIMIT_SECONDS: Final = 120.0
LOG_TAIL_CHARS: Final = 4000
# An unread stdout pipe this small (one page, the least Linux gives) fills after a few lines,
# not after 64 KiB: a stalled log pipeline shows at once.
UNREAD_PIPE_BYTES: Final = 4096


class SidecarExited(AssertionError):
    """The sidecar process ended when it should still be running."""


@dataclass(frozen=True, slots=True)
class Reply:
    """One HTTP answer, read whole."""

    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes
    elapsed_seconds: float

    def json(self) -> Any:
        return json.loads(self.body)


def set_fault(path: Path, fault: str) -> None:
    """Switch the injected fault of a sidecar started with `fault_file=path` (atomically)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(fault)
    tmp.replace(path)


class SidecarProcess:
    """One `health-sidecar` process on 127.0.0.1:`port`, its logs in `log_dir`."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        args: Sequence[str] = (),
        port: int | None = None,
        log_dir: Path | None = None,
        fault_file: Path | None = None,
        defaults: Mapping[str, str] = DEFAULT_ENV,
        name: str = "sidecar",
        unread_stdout: bool = False,
        closed_fds: Sequence[int] = (),
    ) -> None:
        self.port = port or free_port()
        self.host = LOOPBACK
        self.args = list(args)
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="sidecar-proc-"))
        self.stdout_path = self.log_dir / f"{name}.stdout.log"
        self.stderr_path = self.log_dir / f"{name}.stderr.log"
        self.fault_file = fault_file
        # True: stdout is a pipe nobody reads until `read_stdout_pipe()` (a stalled log
        # pipeline); `events()` then sees nothing and waits fall back to the port.
        self.unread_stdout = unread_stdout
        # Standard descriptors the process starts without (`<&-`, `>&-`): 0, 1 or 2.
        self.closed_fds = tuple(closed_fds)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONUNBUFFERED": "1",
            "SIDECAR_HOST": self.host,
            "SIDECAR_PORT": str(self.port),
            **defaults,
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self._pipe_read: int | None = None  # our end of the unread stdout pipe

    # ---- lifecycle ---------------------------------------------------------------------------

    def command(self) -> list[str]:
        # The shell closes the descriptors and execs: the PID is the sidecar's.
        closes = " ".join(f"{fd}<&-" for fd in self.closed_fds)
        closing = ["sh", "-c", f'exec "$@" {closes}', "sh"] if closes else []
        if self.fault_file is None:
            return [*closing, sys.executable, "-m", "sidecar", *self.args]
        return [
            *closing,
            sys.executable,
            str(Path(__file__)),
            "--fault-file",
            str(self.fault_file),
            *self.args,
        ]

    def start(self) -> Self:
        if self.process is not None:
            raise RuntimeError("already started")
        if self.fault_file is not None and not self.fault_file.exists():
            set_fault(self.fault_file, "")
        pipe_write: int | None = None
        if self.unread_stdout:
            self._pipe_read, pipe_write = os.pipe()
            fcntl.fcntl(pipe_write, fcntl.F_SETPIPE_SZ, UNREAD_PIPE_BYTES)
        try:
            with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
                self.process = subprocess.Popen(
                    self.command(),
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=out if pipe_write is None else pipe_write,
                    stderr=err,
                    cwd=self.log_dir,
                )
        finally:
            if pipe_write is not None:
                os.close(pipe_write)  # the child holds its own copy
        return self

    def read_stdout_pipe(self, seconds: float) -> str:
        """Read the unread stdout pipe for `seconds` (or until it closes): the pipe moves."""
        fd = self._pipe_read
        if self.process is None or fd is None:
            raise RuntimeError("not started with unread_stdout")
        os.set_blocking(fd, False)
        chunks: list[bytes] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                time.sleep(0.02)
                continue
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("not started")
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def wait_listening(self, timeout: float = LISTEN_TIMEOUT_SECONDS) -> float:
        """Wait for the `sidecar.listening` event (or, when the log level hides it, for the
        port to accept); return how long it took. Fails at once if the process exits first."""
        started = time.monotonic()
        deadline = started + timeout
        while not (self.events("sidecar.listening") or self._accepts()):
            self.assert_alive("before listening")
            if time.monotonic() >= deadline:
                raise AssertionError(f"not listening within {timeout:g}s\n{self.tail()}")
            time.sleep(0.02)
        return time.monotonic() - started

    def _accepts(self) -> bool:
        try:
            socket.create_connection((self.host, self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int:
        """SIGTERM our PID, wait; SIGKILL it if it does not exit in `timeout`. The exit code."""
        process = self.process
        if process is None:
            return 0
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                process.wait(10)
        return process.returncode

    def kill(self) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            assert self.process is not None
            self.process.wait(10)

    def wait_exit(self, timeout: float) -> int:
        if self.process is None:
            raise RuntimeError("not started")
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout:g}s\n{self.tail()}") from None

    def __enter__(self) -> Self:
        if self.process is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._pipe_read is not None:
            os.close(self._pipe_read)
            self._pipe_read = None

    def assert_alive(self, when: str = "") -> None:
        if not self.alive:
            raise SidecarExited(
                f"sidecar exited ({self.returncode()}) {when}\n{self.tail()}".rstrip()
            )

    # ---- HTTP --------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        timeout: float = REQUEST_TIMEOUT_SECONDS,
    ) -> Reply:
        """One request on a fresh connection, as kubelet makes them."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        started = time.monotonic()
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        return Reply(
            status=response.status,
            headers={k.lower(): v for k, v in response.getheaders()},
            body=data,
            elapsed_seconds=time.monotonic() - started,
        )

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)

    def status(self, path: str) -> int:
        """The status of GET `path`; 0 when the request fails (refused, timed out)."""
        try:
            return self.get(path, timeout=2).status
        except (OSError, http.client.HTTPException):
            return 0

    def statuses(self) -> dict[str, int]:
        return {p: self.status(p) for p in ("/health", "/ready", "/startup")}

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Every sample of /metrics by (name, labels)."""
        reply = self.get("/metrics")
        assert reply.status == 200, reply
        samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(reply.body.decode()):
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return samples

    def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics; KeyError naming it when it is absent."""
        samples = self.metrics()
        key = (name, frozenset(labels.items()))
        if key not in samples:
            raise KeyError(f"{name}{labels} not in /metrics")
        return samples[key]

    # ---- logs --------------------------------------------------------------------------------

    def stdout(self) -> str:
        return _read(self.stdout_path)

    def stderr(self) -> str:
        return _read(self.stderr_path)

    def log_text(self) -> str:
        """stdout and stderr together."""
        return self.stdout() + self.stderr()

    def events(self, name: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """Parsed JSON log lines from stdout, optionally only `event == name` with fields
        equal to `match` (use `from_` for the `from` key)."""
        wanted = {("from" if k == "from_" else k): v for k, v in match.items()}
        found = []
        for line in self.stdout().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            if name is not None and event.get("event") != name:
                continue
            if all(event.get(k) == v for k, v in wanted.items()):
                found.append(event)
        return found

    def non_json_lines(self) -> list[str]:
        """stdout lines that are not JSON objects (there should be none)."""
        bad = []
        for line in self.stdout().splitlines():
            try:
                ok = isinstance(json.loads(line), dict)
            except ValueError:
                ok = False
            if not ok:
                bad.append(line)
        return bad

    def wait_event(
        self, name: str, *, timeout: float, after: int = 0, **match: Any
    ) -> dict[str, Any]:
        """The first event `name` (matching `match`) beyond the first `after` such events."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.events(name, **match)
            if len(found) > after:
                return found[after]
            self.assert_alive(f"waiting for {name}")
            if time.monotonic() >= deadline:
                raise AssertionError(f"no {name} {match} within {timeout:g}s\n{self.tail()}")
            time.sleep(0.05)

    def wait_status(
        self, path: str, status: int, *, within: float = SLACK, since: float | None = None
    ) -> float:
        """Seconds (since `since`, else now) until GET `path` answers `status`; fails at once
        if the process exits meanwhile."""

        def answered() -> bool:
            self.assert_alive(f"waiting for {path} -> {status}")
            return self.status(path) == status

        _, elapsed = timed_until(
            answered, timeout=within, message=f"{path} -> {status}\n{self.tail(1500)}", since=since
        )
        return elapsed

    def log_barrier(self, timeout: float = SLACK) -> None:
        """Return once every line the process logged before this call is in its stdout: one
        writer thread writes the lines in order, so the line a SIGUSR1 makes comes after them."""
        before = len(self.events("sidecar.signal_ignored", signal="SIGUSR1"))
        os.kill(self.pid, signal.SIGUSR1)
        self.wait_event("sidecar.signal_ignored", timeout=timeout, after=before, signal="SIGUSR1")

    def tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        return (
            f"--- stdout ({self.stdout_path}) ---\n{self.stdout()[-chars:]}\n"
            f"--- stderr ---\n{self.stderr()[-chars:]}"
        )

    # ---- the process -------------------------------------------------------------------------

    def rss_bytes(self) -> int:
        """Resident set size now, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))


@dataclass(frozen=True, slots=True)
class Stopped:
    """How a started sidecar ended at `SidecarStarter.stop_all`."""

    sidecar: SidecarProcess
    alive_until_stopped: bool
    exit_code: int


class SidecarStarter:
    """The one way tests start sidecars (the `start_sidecar` fixture): each logs into
    `log_dir` under its own name, is listening when `start` returns (and ready, unless
    `ready=False`), and is stopped by PID at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[SidecarProcess] = []

    def __call__(
        self, env: Mapping[str, str], *, ready: bool = True, **kwargs: Any
    ) -> SidecarProcess:
        sidecar = SidecarProcess(
            env, log_dir=self.log_dir, name=f"sidecar{len(self.started)}", **kwargs
        )
        self.started.append(sidecar)
        sidecar.start()
        sidecar.wait_listening()
        if ready:
            sidecar.wait_status("/ready", 200, within=15 + SLACK)
        return sidecar

    def stop_all(self) -> list[Stopped]:
        """SIGTERM each (SIGKILL after a bound); whether it was still running, its exit code."""
        stopped = []
        for sidecar in self.started:
            alive = sidecar.alive
            stopped.append(Stopped(sidecar, alive, sidecar.stop()))
        self.started.clear()
        return stopped


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # monotonic
    status: int  # 0: no answer (refused, timed out)
    elapsed_seconds: float


class Sampler:
    """GET `path` on a fresh connection every `period` seconds in a thread, for the length of
    a `with` block (bounded by `limit` seconds): what kubelet would have seen meanwhile."""

    def __init__(
        self, sidecar: SidecarProcess, path: str, *, period: float = 0.1, limit: float = 120.0
    ) -> None:
        self.sidecar = sidecar
        self.path = path
        self.period = period
        self.limit = limit
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sampler{path}", daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self._stop.is_set() and time.monotonic() < deadline:
            started = time.monotonic()
            try:
                status = self.sidecar.get(self.path, timeout=2).status
            except (OSError, http.client.HTTPException):
                status = 0
            self.samples.append(Sample(started, status, time.monotonic() - started))
            self._stop.wait(self.period)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(10)

    def statuses(self) -> set[int]:
        return {s.status for s in self.samples}

    def slowest_seconds(self) -> float:
        return max((s.elapsed_seconds for s in self.samples), default=0.0)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


@dataclass
class Measurements:
    """Figures measured by a test module, written as JSON when the module is done.

    The directory is $SIDECAR_TEST_OUT, else <tmp>/health-sidecar-test-out; docs/reliability.md
    quotes these files."""

    filename: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, **row: Any) -> None:
        self.rows.append({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})

    @staticmethod
    def directory() -> Path:
        out = os.environ.get("SIDECAR_TEST_OUT") or str(
            Path(tempfile.gettempdir()) / "health-sidecar-test-out"
        )
        return Path(out)

    def write(self) -> Path:
        directory = self.directory()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / self.filename
        path.write_text(json.dumps(self.rows, indent=2) + "\n")
        return path


# ---- fault injection: this module run as the sidecar's entry point ----------------------------


class InjectedDeath(BaseException):
    """Escapes every `except Exception`: ends the probe loop as a stray BaseException would."""


def _fault(path: Path) -> tuple[str, str]:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return "", ""
    word, _, rest = text.partition(" ")
    return word, rest


def install_faults(path: Path) -> None:
    """Wrap PostgresCheck.run so that `path` decides, before every check, what goes wrong."""
    import asyncio  # noqa: PLC0415 -- only the injected sidecar needs these

    from sidecar.checks.postgres import PostgresCheck  # noqa: PLC0415

    real_run = PostgresCheck.run

    async def run(self: PostgresCheck) -> None:
        word, rest = _fault(path)
        if word == "raise":
            raise RuntimeError(rest or "injected fault")
        if word == "die":
            raise InjectedDeath(rest or "injected death")
        if word == "stall":
            deadline = time.monotonic() + STALL_LIMIT_SECONDS
            while _fault(path)[0] == "stall" and time.monotonic() < deadline:
                # A wedged check: cancellation (the prober's timeout) is swallowed.
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(0.05)
        await real_run(self)

    PostgresCheck.run = run  # type: ignore[method-assign]


def _main(argv: list[str]) -> int:
    from sidecar.__main__ import main  # noqa: PLC0415

    if argv[:1] == ["--fault-file"]:
        install_faults(Path(argv[1]))
        argv = argv[2:]
    return main(argv)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
