"""Hostile HTTP against the real sidecar: garbage, oversize, odd methods, load, slow clients.

Loopback only, every loop bounded in count and time. After each attack the process is alive,
/health answers 200 promptly, and memory (RSS) and open sockets are back within bounds; the
figures go to <out>/hostile_http.json (see `Measurements`).

Responses that aiohttp's HTTP parser writes for requests it cannot parse (the 400s here) are not
ours and carry no `Cache-Control`; every response our application writes does.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sidecar_proc import Measurements, Sampler, SidecarProcess, timed_until
from support import SLACK
from support.once import LISTEN_QUEUES, exclusive
from support.pg import PostgresServer

from sidecar.server import KEEPALIVE_TIMEOUT_SECONDS

# kubelet's default timeoutSeconds: a /health answer slower than this is a failed probe.
PROMPT_SECONDS = 1.0
RSS_GROWTH_LIMIT = 32 * 1024 * 1024
PROBE_PATHS = ("/health", "/livez", "/ready", "/readyz", "/startup", "/startupz")


@pytest.fixture(scope="module")
def figures() -> Iterator[Measurements]:
    figures = Measurements("hostile_http.json")
    yield figures
    print(f"hostile HTTP measurements: {figures.write()}")


@pytest.fixture(scope="module")
def sidecar(
    pg: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SidecarProcess]:
    """One ready sidecar for the module (info-level logs, as in production)."""
    process = SidecarProcess(
        {"SIDECAR_DATABASE_URL": pg.dsn(), "SIDECAR_LOG_LEVEL": "info"},
        log_dir=tmp_path_factory.mktemp("hostile"),
    )
    with process:
        process.wait_listening()
        process.wait_status("/ready", 200, within=SLACK)
        yield process
        alive = process.alive
    assert alive, f"the sidecar died\n{process.tail()}"
    assert process.returncode() == 0, process.tail()


@pytest.fixture
def healthy_after(sidecar: SidecarProcess) -> Iterator[SidecarProcess]:
    """The test's sidecar; afterwards it must be alive and answer /health 200 promptly."""
    yield sidecar
    sidecar.assert_alive("after the attack")
    reply = sidecar.get("/health")
    assert reply.status == 200
    assert reply.elapsed_seconds < PROMPT_SECONDS


def raw_exchange(port: int, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send `data` on a fresh connection; read one whole response, or until the server closes
    the connection, or `timeout`."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # The server may give up on us mid-send: what it said first still counts.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not _complete(received):
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            received += chunk
    return received


def _complete(response: bytes) -> bool:
    head, sep, body = response.partition(b"\r\n\r\n")
    if not sep:
        return False
    length = header(head + sep, "Content-Length")
    return length is not None and len(body) >= int(length)


def status_of(response: bytes) -> int | None:
    """The status code of the first response in `response`; None when there is none."""
    if not response.startswith(b"HTTP/1."):
        return None
    return int(response.split(b" ", 2)[1])


def header(response: bytes, name: str) -> str | None:
    head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


# ---- garbage and oversize --------------------------------------------------------------------

_rng = random.Random(3)  # reproducible noise
GARBAGE: dict[str, bytes] = {
    "random bytes": bytes(_rng.randrange(256) for _ in range(2048)),
    "NUL bytes": b"\x00" * 4096,
    "TLS ClientHello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)),
    "bare newlines": b"\r\n" * 2000,  # skipped as empty lines: no answer, the line stays open
    "unknown HTTP version": b"GET /health HTTP/9.9\r\n\r\n",
    "header without colon": b"GET /health HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n",
    "NUL in path": b"GET /he\x00alth HTTP/1.1\r\nHost: x\r\n\r\n",
    "invalid UTF-8 in path": b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
    "asterisk target on GET": b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
    "CL and TE together (smuggling)": (
        b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "bad chunk size": (
        b"POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    ),
    "negative Content-Length": b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "method not a token": b"G(E)T /health HTTP/1.1\r\nHost: x\r\n\r\n",
}


def test_garbage_gets_a_4xx_or_a_close_and_no_error_log(healthy_after: SidecarProcess) -> None:
    """Garbage bytes get a 4xx or a close, never a 5xx, and no error-level log line."""
    # aiohttp answers these itself; a client's garbage is not our error, and since anyone who
    # reaches the port can send it, it must not be able to flood the log at error level.
    sidecar = healthy_after
    errors_before = len(sidecar.events(level="error"))
    for name, data in GARBAGE.items():
        response = raw_exchange(sidecar.port, data, timeout=1.5)
        status = status_of(response)
        assert status is None or 400 <= status < 500, (name, response[:200])
        sidecar.assert_alive(f"after {name}")
    sidecar.log_barrier()  # every line logged so far has landed
    assert sidecar.events(level="error")[errors_before:] == []
    assert "Traceback" not in sidecar.log_text()


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("request line of 10 KiB", b"GET /" + b"a" * 10240 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("request line of 1 MiB", b"GET /" + b"a" * (1 << 20) + b" HTTP/1.1\r\n\r\n"),
        ("one header of 10 KiB", b"GET /health HTTP/1.1\r\nX-Big: " + b"b" * 10240 + b"\r\n\r\n"),
        (
            "200 headers",
            b"GET /health HTTP/1.1\r\n"
            + b"".join(b"X-%d: 1\r\n" % i for i in range(200))
            + b"\r\n",
        ),
        ("header name of 10 KiB", b"GET /health HTTP/1.1\r\n" + b"N" * 10240 + b": v\r\n\r\n"),
    ],
)
def test_oversized_request_line_or_headers_get_a_4xx(
    healthy_after: SidecarProcess, name: str, data: bytes
) -> None:
    """Request lines and headers beyond aiohttp's limits get a 4xx."""
    # aiohttp's limits: 8190 bytes for the request line and for each header, 128 headers.
    response = raw_exchange(healthy_after.port, data)
    status = status_of(response)
    assert status is not None, f"{name}: no answer"
    assert 400 <= status < 500, (name, response[:300])


def test_large_but_legal_headers_are_answered(healthy_after: SidecarProcess) -> None:
    """800 KB of headers just under the limits: answered 200, memory bounded."""
    sidecar = healthy_after
    rss = sidecar.rss_bytes()
    data = (
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 8000) for i in range(100))
        + b"\r\n"
    )
    for _ in range(20):
        assert status_of(raw_exchange(sidecar.port, data)) == 200
    assert sidecar.rss_bytes() - rss < RSS_GROWTH_LIMIT


def test_a_body_nobody_asked_for_is_refused_promptly(healthy_after: SidecarProcess) -> None:
    """A POST with a 4 MiB body to /health: 405 with Allow and no-store, promptly."""
    body = b"x" * (4 << 20)
    started = time.monotonic()
    response = raw_exchange(
        healthy_after.port,
        b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
    )
    assert status_of(response) == 405
    assert header(response, "Allow") == "GET, HEAD"
    assert header(response, "Cache-Control") == "no-store"
    assert time.monotonic() - started < SLACK


# ---- methods and headers of our own answers -----------------------------------------------------

METHODS = ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "MKCOL", "PURGE")


@pytest.mark.parametrize("method", METHODS)
def test_unsupported_methods_are_405_with_allow_and_no_store(
    healthy_after: SidecarProcess, method: str
) -> None:
    """Every method but GET and HEAD on every endpoint: 405, Allow, no-store, JSON."""
    for path in (*PROBE_PATHS, "/metrics"):
        reply = healthy_after.request(method, path)
        assert reply.status == 405, (method, path)
        assert reply.headers["allow"] == "GET, HEAD"
        assert reply.headers["cache-control"] == "no-store"
        assert reply.json()["status"] == "fail"
    counted = healthy_after.metric(
        "health_sidecar_http_requests_total", handler="other", code="405"
    )
    assert counted >= 7


OUR_ANSWERS: list[tuple[str, str, dict[str, str]]] = [
    *[(m, p, {}) for m in ("GET", "HEAD") for p in (*PROBE_PATHS, "/metrics")],
    *[("GET", f"{p}?verbose", {}) for p in PROBE_PATHS],
    ("GET", "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}),
    ("GET", "/health?unknown=1", {}),  # 400 from our handler
    ("GET", "/nope", {}),  # 404
    ("GET", "/health/", {}),
    ("GET", "//health", {}),
    ("GET", "/%2e%2e/%2e%2e/etc/passwd", {}),
    ("GET", "/" + "a" * 8000, {}),
    ("GET", "http://evil.example/ready", {}),  # absolute form
    ("POST", "/nope", {}),
    ("DELETE", "/metrics", {}),
]


def test_every_answer_of_ours_carries_no_store(healthy_after: SidecarProcess) -> None:
    """Every response our application writes carries Cache-Control: no-store."""
    seen = set()
    for method, path, headers in OUR_ANSWERS:
        reply = healthy_after.request(method, path, headers=headers)
        seen.add(reply.status)
        assert reply.headers.get("cache-control") == "no-store", (method, path, reply)
    assert {200, 400, 404, 405} <= seen


# ---- load -------------------------------------------------------------------------------------


def listen_overflows() -> int:
    """The kernel's count of connections dropped because an accept queue was full (TcpExt
    ListenOverflows, for this network namespace); a dropped SYN costs the client 1 s."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=True):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(table["ListenOverflows"])
    raise RuntimeError("no TcpExt in /proc/net/netstat")


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        if line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split(" ", 2)[1]), headers, body


async def keepalive_client(port: int, paths: list[str]) -> list[tuple[int, str | None]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    results = []
    try:
        for path in paths:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: sidecar\r\n\r\n".encode())
            status, headers, _ = await read_response(reader)
            results.append((status, headers.get("cache-control")))
    finally:
        writer.close()
    return results


async def one_shot_client(port: int, path: str) -> tuple[int, str | None]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: sidecar\r\nConnection: close\r\n\r\n".encode())
        status, headers, _ = await read_response(reader)
    finally:
        writer.close()
    return status, headers.get("cache-control")


@pytest.mark.slow
async def test_thousands_of_requests_over_hundreds_of_connections(
    healthy_after: SidecarProcess, figures: Measurements
) -> None:
    """4000 requests over 200-400 concurrent connections: all 200, none dropped, /health prompt."""
    sidecar = healthy_after
    port = sidecar.port
    rss_before, fds_before = sidecar.rss_bytes(), sidecar.open_fds()
    mix = ["/health", "/ready", "/startup", "/livez", "/readyz"]
    # The overflow count is the whole network namespace's: no other worker's burst meanwhile.
    with exclusive(LISTEN_QUEUES):
        overflows_before = listen_overflows()
        started = time.monotonic()
        with Sampler(sidecar, "/health", period=0.05) as probe:
            async with asyncio.timeout(120):
                batches = await asyncio.gather(
                    *(
                        keepalive_client(port, [mix[(c + i) % 5] for i in range(15)])
                        for c in range(200)
                    )
                )
                semaphore = asyncio.Semaphore(400)

                async def limited(i: int) -> tuple[int, str | None]:
                    async with semaphore:
                        return await one_shot_client(port, mix[i % 5])

                one_shots = await asyncio.gather(*(limited(i) for i in range(1000)))
        elapsed = time.monotonic() - started
        overflows = listen_overflows() - overflows_before
    results = [r for batch in batches for r in batch] + one_shots
    assert len(results) == 4000
    assert set(results) == {(200, "no-store")}
    # A burst of 400 connects fits the listen backlog: no SYN dropped, so no 1 s retry that
    # would fail a kubelet probe (timeoutSeconds 1) caught in the same burst.
    assert overflows == 0, f"{overflows} connections overflowed the accept queue"
    rss_after = sidecar.rss_bytes()
    assert probe.statuses() == {200}
    assert probe.slowest_seconds() < PROMPT_SECONDS
    assert rss_after - rss_before < RSS_GROWTH_LIMIT
    timed_until(lambda: sidecar.open_fds() <= fds_before + 2, timeout=SLACK, message="fds back")
    figures.add(
        attack="4000 requests: 200 keep-alive connections x 15, then 1000 one-shot (400 at once)",
        seconds=elapsed,
        requests_per_second=len(results) / elapsed,
        health_probes=len(probe.samples),
        slowest_health_seconds=probe.slowest_seconds(),
        rss_before_mib=rss_before / 2**20,
        rss_after_mib=rss_after / 2**20,
        fds_before=fds_before,
        fds_after=sidecar.open_fds(),
        listen_overflows=overflows,
    )


@pytest.mark.slow
async def test_pipelining_client_that_never_reads_stays_bounded(
    healthy_after: SidecarProcess, figures: Measurements
) -> None:
    """A client pipelining requests and never reading: RSS bounded, /health prompt."""
    # 60000 /metrics requests (2 MB) whose answers would be ~300 MB if buffered.
    sidecar = healthy_after
    rss_before = sidecar.rss_bytes()
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    sock = socket.create_connection(("127.0.0.1", sidecar.port))
    sock.setblocking(False)
    sent = 0
    try:
        with Sampler(sidecar, "/health") as probe:
            deadline = time.monotonic() + 8
            payload = request * 60000
            while sent < len(payload) and time.monotonic() < deadline:
                try:
                    sent += sock.send(payload[sent : sent + 65536])
                except BlockingIOError:
                    await asyncio.sleep(0.05)  # the server stopped reading: backpressure
            await asyncio.sleep(1)
            rss_during = sidecar.rss_bytes()
    finally:
        sock.close()
    assert probe.statuses() == {200}
    assert probe.slowest_seconds() < PROMPT_SECONDS
    assert rss_during - rss_before < RSS_GROWTH_LIMIT
    figures.add(
        attack="pipelined /metrics requests, answers never read",
        bytes_sent=sent,
        requests_sent=sent // len(request),
        rss_before_mib=rss_before / 2**20,
        rss_during_mib=rss_during / 2**20,
        slowest_health_seconds=probe.slowest_seconds(),
    )


@pytest.mark.slow
async def test_hundreds_of_half_open_slow_clients_are_dropped_in_time(
    healthy_after: SidecarProcess, figures: Measurements
) -> None:
    """300 half-open slow clients: /health prompt, all dropped within the keep-alive timeout."""
    # Silent, half a request line, or headers one byte per second (slowloris); the sidecar
    # must close each within its keep-alive timeout so sockets and memory come back.
    sidecar = healthy_after
    rss_before, fds_before = sidecar.rss_bytes(), sidecar.open_fds()
    partials = [b"", b"GET /hea", b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: "]
    streams = []
    opened = time.monotonic()
    for i in range(300):
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
        writer.write(partials[i % 3])
        streams.append((reader, writer))

    async def trickle() -> None:
        # Slowloris: one more header byte per second on every third connection.
        for _ in range(int(KEEPALIVE_TIMEOUT_SECONDS + SLACK)):
            for reader, writer in streams[2::3]:
                if not writer.is_closing() and not reader.at_eof():
                    writer.write(b"a")
            await asyncio.sleep(1)

    async def closed_by_server(reader: asyncio.StreamReader) -> float:
        with contextlib.suppress(ConnectionError):
            await reader.read()  # until EOF: the sidecar closed it (a 4xx may come first)
        return time.monotonic() - opened

    trickler = asyncio.create_task(trickle())
    try:
        with Sampler(sidecar, "/health", period=0.1) as probe:
            await asyncio.sleep(3)
            fds_during, rss_during = sidecar.open_fds(), sidecar.rss_bytes()
            async with asyncio.timeout(KEEPALIVE_TIMEOUT_SECONDS + 2 * SLACK):
                closed_after = await asyncio.gather(*(closed_by_server(r) for r, _ in streams))
    finally:
        trickler.cancel()
        for _, writer in streams:
            writer.close()
    assert fds_during >= 300, "the slow clients were not all connected"
    assert probe.statuses() == {200}
    assert probe.slowest_seconds() < PROMPT_SECONDS
    assert max(closed_after) <= KEEPALIVE_TIMEOUT_SECONDS + SLACK
    timed_until(lambda: sidecar.open_fds() <= fds_before + 2, timeout=SLACK, message="fds back")
    rss_after = sidecar.rss_bytes()
    assert rss_after - rss_before < RSS_GROWTH_LIMIT
    figures.add(
        attack="300 half-open slow clients (silent, half a request line, slowloris headers)",
        keepalive_timeout_seconds=KEEPALIVE_TIMEOUT_SECONDS,
        dropped_after_seconds_max=max(closed_after),
        health_probes=len(probe.samples),
        slowest_health_seconds=probe.slowest_seconds(),
        fds_before=fds_before,
        fds_during=fds_during,
        fds_after=sidecar.open_fds(),
        rss_before_mib=rss_before / 2**20,
        rss_during_mib=rss_during / 2**20,
        rss_after_mib=rss_after / 2**20,
    )


def test_logs_stay_json_lines(healthy_after: SidecarProcess) -> None:
    """After garbage, a bad request line and control characters in a path (sent here, so
    the test needs no other to run first), every stdout line is one JSON object and stderr
    is empty."""
    for data in (
        b"\x00\xff\xfe not http at all\r\n\r\n",
        b"GET /ready HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /\x1b[31m\x7f HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ):
        assert raw_exchange(healthy_after.port, data).split(b" ", 2)[1].startswith(b"4")
    assert healthy_after.non_json_lines() == []
    assert healthy_after.stderr() == ""
