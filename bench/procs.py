"""Processes the bench starts: spawn, wait for a port or a 200, read /proc, stop by PID.

Every process the bench starts is registered here and stopped by its own PID at exit; nothing is
ever stopped by name.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

CLOCK_TICKS_PER_SECOND: Final = os.sysconf("SC_CLK_TCK")
PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE")
MIB: Final = 1024 * 1024

REPO: Final = Path(__file__).resolve().parent.parent

_started: list[subprocess.Popen[bytes]] = []


def os_user_for_postgres() -> str | None:
    """PostgreSQL and pgbouncer refuse root: run them as `postgres` when we are root."""
    return "postgres" if os.geteuid() == 0 else None


_handed_out: set[int] = set()
_port_cursor = [random.randrange(1000)]


def _ephemeral_floor() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    return 32768


def free_port() -> int:
    """A loopback TCP port that is free now and that this run has not handed out before.

    Not bind-to-0: that draws from the ephemeral range, where the kernel also picks the local
    ports of outgoing connections, so with 50 sidecars connecting to PostgreSQL a port handed
    out here could be taken before its server binds it (and two draws can repeat). Ports below
    the ephemeral range, each handed out once, avoid both.
    """
    low = max(1024, _ephemeral_floor() - 12000)
    span = _ephemeral_floor() - low
    for _ in range(span):
        port = low + _port_cursor[0] % span
        _port_cursor[0] += 1
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free loopback port below the ephemeral range")


def cpu_list() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def pinned(argv: Sequence[str], cpu: int | None) -> list[str]:
    """Prefix argv with taskset so the process (and anything it forks) runs on one CPU."""
    if cpu is None:
        return list(argv)
    return ["taskset", "-c", str(cpu), *argv]


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    user: str | None = None,
    log: IO[bytes] | None = None,
    stdout: IO[bytes] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a process in its own session, remember it, and return it.

    `log` takes stdout and stderr together; `stdout` alone keeps stderr out (JSON reports).
    The working directory defaults to the repository root, so `python -m bench.x` resolves.
    """
    out = stdout if stdout is not None else log
    proc = subprocess.Popen(
        list(argv),
        env=dict(env) if env is not None else None,
        cwd=cwd if cwd is not None else REPO,
        stdin=subprocess.DEVNULL,
        stdout=out if out is not None else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
        user=user,
        group=user,
        extra_groups=[] if user is not None else None,
        start_new_session=True,
    )
    _started.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, grace: float = 5.0) -> None:
    """Stop one process we started, by its PID: signal, wait, then SIGKILL if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=grace)
    if proc in _started:
        _started.remove(proc)


def stop_many(batch: Sequence[subprocess.Popen[bytes]], *, grace: float = 10.0) -> None:
    """Signal a batch at once, then reap each: n graceful exits overlap instead of queueing."""
    for proc in batch:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
    for proc in batch:
        stop(proc, grace=grace)


def stop_all() -> None:
    """Stop every process still registered, newest first (clients before servers)."""
    for proc in reversed(list(_started)):
        stop(proc, grace=3.0)


atexit.register(stop_all)


def wait_for_port(
    port: int, *, timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.01) + 1):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def http_get(port: int, path: str, *, timeout: float = 1.0) -> tuple[int, dict[str, str], bytes]:
    """One blocking GET with Connection: close; returns status, lower-cased headers, body."""
    with socket.create_connection(("127.0.0.1", port), timeout) as sock:
        sock.settimeout(timeout)
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode("ascii"))
        chunks: list[bytes] = []
        for _ in range(10_000):
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def wait_for_status(
    port: int,
    path: str,
    *,
    timeout: float,
    want: int = 200,
    proc: subprocess.Popen[bytes] | None = None,
    poll_interval: float = 0.002,
) -> float:
    """Poll until `path` answers `want`; return the monotonic time it first did."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / poll_interval) + 1):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError, ValueError, IndexError):
            status, _, _ = http_get(port, path, timeout=0.5)
            if status == want:
                return time.monotonic()
        if time.monotonic() > deadline:
            break
        time.sleep(poll_interval)
    raise TimeoutError(f"127.0.0.1:{port}{path} did not answer {want} within {timeout}s")


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of /proc/<pid>/stat the bench uses, CPU in seconds."""

    pid: int
    ppid: int
    cpu_seconds: float
    children_cpu_seconds: float


def read_stat(pid: int) -> ProcStat:
    raw = Path(f"/proc/{pid}/stat").read_text()
    # The command name is in parentheses and may contain spaces: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime/stime are fields 14/15, cutime/cstime 16/17.
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return ProcStat(
        pid=pid,
        ppid=int(fields[1]),
        cpu_seconds=(utime + stime) / CLOCK_TICKS_PER_SECOND,
        children_cpu_seconds=(cutime + cstime) / CLOCK_TICKS_PER_SECOND,
    )


def task_cpu_seconds(pid: int) -> float:
    """CPU a live process has used, to the nanosecond: the scheduler's se.sum_exec_runtime
    (milliseconds) of each of its threads. /proc/<pid>/stat counts 10 ms ticks, too coarse for
    a PostgreSQL backend that spends 30 us on a SELECT 1; it is the fallback."""
    total_ms = 0.0
    found = False
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                for line in Path(f"/proc/{pid}/task/{tid}/sched").read_text().splitlines():
                    if line.startswith("se.sum_exec_runtime"):
                        total_ms += float(line.split(":", 1)[1])
                        found = True
                        break
    if not found:
        return read_stat(pid).cpu_seconds
    return total_ms / 1000


def children_of(pid: int) -> list[int]:
    """Direct children of pid, from /proc (one scan)."""
    kids: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError):
            if read_stat(int(entry.name)).ppid == pid:
                kids.append(int(entry.name))
    return kids


def tree_cpu_seconds(pid: int, *, exclude: Collection[int] = ()) -> float:
    """CPU of a process, its live children (less `exclude`) and its reaped children.

    Reaped children count through the parent's cutime/cstime (in ticks), so a short-lived
    PostgreSQL backend that came and went between two readings is still counted.
    """
    total = task_cpu_seconds(pid) + read_stat(pid).children_cpu_seconds
    for kid in children_of(pid):
        if kid not in exclude:
            with contextlib.suppress(OSError, ValueError):
                total += task_cpu_seconds(kid)
    return total


def cpu_seconds(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            total += task_cpu_seconds(pid)
    return total


def rss_bytes(pid: int) -> int:
    """Resident set size from /proc/<pid>/statm (pages)."""
    resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return resident * PAGE_SIZE


def private_bytes(pid: int) -> int:
    """Unique set size: pages only this process maps (Private_Clean + Private_Dirty).

    RSS also counts shared libraries (libpython, libcrypto) that every copy of the same image
    on a node shares; USS is what one more process really adds.
    """
    total_kib = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total_kib += int(line.split()[1])
    return total_kib * 1024


def tree_private_bytes(pid: int) -> int:
    total = private_bytes(pid)
    for kid in children_of(pid):
        with contextlib.suppress(OSError, ValueError):
            total += private_bytes(kid)
    return total


def tree_rss_bytes(pid: int) -> int:
    total = rss_bytes(pid)
    for kid in children_of(pid):
        with contextlib.suppress(OSError, ValueError):
            total += rss_bytes(kid)
    return total
