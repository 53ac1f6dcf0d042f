"""A small HTTP/1.1 load generator, run as its own process so it never shares a GIL with a server.

Two modes, both bounded in count and time:
- `closed`: N keep-alive connections send back to back for D seconds (a fallback for wrk).
- `rate`: an open-loop prober at R requests per second for D seconds, each with its own timeout,
  like kubelet (a fresh connection per probe unless --keepalive). Records every probe.

Prints one JSON document on stdout. Times are `time.monotonic()`, which on Linux is one clock
for every process on the machine, so the harness can line probes up with its own events.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Final

TIMEOUT_STATUS: Final = 0  # the probe got no answer within its timeout
ERROR_STATUS: Final = -1  # connection refused, reset, or a malformed answer
MAX_HEADER_BYTES: Final = 64 * 1024


class HttpError(Exception):
    """The peer closed early or sent something this client does not parse."""


def _request_bytes(path: str, *, close: bool) -> bytes:
    connection = "close" if close else "keep-alive"
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench-loadgen\r\n"
        f"Accept: */*\r\nConnection: {connection}\r\n\r\n"
    ).encode("ascii")


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; return (status, server wants the connection closed)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        raise HttpError("connection closed before a full response head") from exc
    except asyncio.LimitOverrunError as exc:
        raise HttpError("response head too large") from exc
    lines = head.split(b"\r\n")
    try:
        status = int(lines[0].split(b" ", 2)[1])
    except (IndexError, ValueError) as exc:
        raise HttpError(f"bad status line {lines[0]!r}") from exc
    length: int | None = None
    close = False
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        if key == b"content-length":
            length = int(value.strip())
        elif key == b"connection":
            close = value.strip().lower() == b"close"
        elif key == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
    if chunked:
        # Chunked bodies: read chunk by chunk (bounded), enough for /metrics on any server.
        for _ in range(100_000):
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.strip().split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length is not None:
        await reader.readexactly(length)
    else:
        await reader.read()
        close = True
    return status, close


@dataclass
class Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def close(self) -> None:
        self.writer.close()


async def _open(port: int) -> Connection:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=MAX_HEADER_BYTES)
    return Connection(reader, writer)


@dataclass
class ClosedLoopResult:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0


async def closed_loop(port: int, path: str, concurrency: int, duration: float) -> dict[str, object]:
    request = _request_bytes(path, close=False)
    result = ClosedLoopResult()
    start = time.monotonic()
    deadline = start + duration

    async def worker() -> None:
        conn: Connection | None = None
        # Bounded: a request costs at least a few microseconds, so this cap is never the limit.
        for _ in range(int(duration * 1_000_000)):
            if time.monotonic() >= deadline:
                break
            try:
                if conn is None:
                    conn = await _open(port)
                sent = time.monotonic()
                conn.writer.write(request)
                status, close = await asyncio.wait_for(_read_response(conn.reader), 5.0)
                result.latencies.append(time.monotonic() - sent)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if close:
                    conn.close()
                    conn = None
            except (OSError, HttpError, TimeoutError, ValueError):
                result.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                await asyncio.sleep(0.01)
        if conn is not None:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - start
    lat = sorted(result.latencies)
    return {
        "mode": "closed",
        "requests": len(lat),
        "seconds": elapsed,
        "rps": len(lat) / elapsed if elapsed > 0 else 0.0,
        "p50_ms": _quantile(lat, 0.50) * 1000,
        "p99_ms": _quantile(lat, 0.99) * 1000,
        "non_2xx": sum(n for code, n in result.statuses.items() if not 200 <= code < 300),
        "errors": result.errors,
        "statuses": {str(k): v for k, v in result.statuses.items()},
    }


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


async def rate_loop(
    port: int,
    path: str,
    *,
    rate: float,
    duration: float,
    probe_timeout: float,
    keepalive: int,
) -> dict[str, object]:
    """Open loop: probe i is sent at start + i / rate whatever happened to the earlier ones."""
    count = max(1, int(rate * duration))
    records: list[tuple[float, float, int]] = []
    idle: list[Connection] = []
    fresh = keepalive <= 0
    request = _request_bytes(path, close=fresh)

    async def probe(sent: float) -> None:
        conn: Connection | None = None
        status = ERROR_STATUS
        try:
            async with asyncio.timeout(probe_timeout):
                if not fresh and idle:
                    conn = idle.pop()
                else:
                    conn = await _open(port)
                conn.writer.write(request)
                status, close = await _read_response(conn.reader)
            if fresh or close or len(idle) >= keepalive:
                conn.close()
            else:
                idle.append(conn)
            conn = None
        except TimeoutError:
            status = TIMEOUT_STATUS
        except (OSError, HttpError, ValueError, asyncio.IncompleteReadError):
            status = ERROR_STATUS
        finally:
            if conn is not None:
                conn.close()
        records.append((sent, time.monotonic() - sent, status))

    start = time.monotonic() + 0.05
    tasks: set[asyncio.Task[None]] = set()
    for i in range(count):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(probe(time.monotonic()))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=probe_timeout + 1.0)
    for conn in idle:
        conn.close()
    records.sort()
    answered = [r for r in records if r[2] > 0]
    elapsed = (records[-1][0] - records[0][0]) if len(records) > 1 else duration
    return {
        "mode": "rate",
        "rate": rate,
        "timeout": probe_timeout,
        "sent": len(records),
        "achieved_rate": len(records) / elapsed if elapsed > 0 else 0.0,
        "answered": len(answered),
        "timeouts": sum(1 for r in records if r[2] == TIMEOUT_STATUS),
        "errors": sum(1 for r in records if r[2] == ERROR_STATUS),
        "records": [[round(t, 6), round(lat, 6), s] for t, lat, s in records],
    }


def _use_fast_loop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: PLC0415 - optional: a lighter client leaves more CPU to the server

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.loadgen")
    parser.add_argument("mode", choices=["closed", "rate"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/ready")
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--keepalive", type=int, default=0, help="idle connections kept (rate)")
    args = parser.parse_args(argv)
    if args.duration > 3600:
        parser.error("--duration is capped at one hour")
    _use_fast_loop()
    if args.mode == "closed":
        out = asyncio.run(closed_loop(args.port, args.path, args.concurrency, args.duration))
    else:
        out = asyncio.run(
            rate_loop(
                args.port,
                args.path,
                rate=args.rate,
                duration=args.duration,
                probe_timeout=args.timeout,
                keepalive=args.keepalive,
            )
        )
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
