"""The http check against a real aiohttp server: statuses, redirects, hangs, keep-alive, TLS."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer
from support import LOOPBACK, SLACK, free_port, wait_until_async
from support.faultproxy import ProxyFactory

from sidecar import __version__
from sidecar.checks.failures import classify
from sidecar.checks.http import HTTP, HttpCheck, HttpSpec
from sidecar.checkspec import CheckPolicy
from sidecar.loop import CheckLoop
from sidecar.reasons import CheckFailed, Reason
from sidecar.state import Board


@dataclass
class Target:
    """The application under check: what it answers, and what it saw."""

    status: int = 200
    stall: bool = False
    # >0: the body is this many 16 KiB chunks, sent a moment apart (it cannot arrive with the
    # headers, so only a client that reads it can reuse the connection).
    body_chunks: int = 0
    released: asyncio.Event = field(default_factory=asyncio.Event)
    partial_sent: asyncio.Event = field(default_factory=asyncio.Event)
    paths: list[str] = field(default_factory=list)
    peer_ports: list[int] = field(default_factory=list)
    user_agents: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.paths.append(request.path)
        self.user_agents.append(request.headers.get("User-Agent", ""))
        transport = request.transport
        assert transport is not None
        self.peer_ports.append(transport.get_extra_info("peername")[1])
        if request.path == "/moved":
            return web.Response(status=302, headers={"Location": "/elsewhere"})
        if request.path == "/endless":
            return await self.endless(request)
        if request.path == "/partial":
            return await self.partial(request)
        if self.stall:
            await self.released.wait()
        if self.body_chunks:
            return await self.chunked(request)
        return web.Response(status=self.status, text="ok")

    async def chunked(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=self.status)
        response.content_length = self.body_chunks * 16384
        await response.prepare(request)
        for _ in range(self.body_chunks):
            await asyncio.sleep(0.01)
            await response.write(b"x" * 16384)
        return response

    async def endless(self, request: web.Request) -> web.StreamResponse:
        """A body that never ends (chunked, written as fast as the client takes it)."""
        response = web.StreamResponse()
        await response.prepare(request)
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                await response.write(b"x" * 16384)
        return response

    async def partial(self, request: web.Request) -> web.StreamResponse:
        """Headers and the first bytes of a longer body, then nothing until released."""
        response = web.StreamResponse()
        response.content_length = 100_000
        await response.prepare(request)
        await response.write(b"x" * 1000)
        self.partial_sent.set()
        await self.released.wait()
        return response


@dataclass
class Site:
    target: Target
    server: TestServer

    def url(self, path: str = "/livez") -> str:
        return str(self.server.make_url(path))

    @property
    def open_connections(self) -> int:
        """Client connections the server holds open now."""
        return len(self.server.handler.connections)


@pytest.fixture
async def site(aiohttp_server: AiohttpServer) -> AsyncIterator[Site]:
    """A real aiohttp server on a free loopback port answering every path via `Target`."""
    target = Target()
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", target.handle)
    server = await aiohttp_server(app)
    try:
        yield Site(target, server)
    finally:
        target.released.set()  # no handler may outlive the test


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and key for 127.0.0.1, made with the openssl CLI."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "tls.crt", folder / "tls.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


def spec_of(check: HttpCheck, policy: CheckPolicy) -> HttpSpec:
    """A spec for the prober: only its name, kind, criticality and schedule are read."""
    return HttpSpec(name=check.name, url="http://unused.invalid/", policy=policy)


@contextlib.asynccontextmanager
async def http_check(
    url: str, *, status_min: int = 200, status_max: int = 399
) -> AsyncIterator[HttpCheck]:
    """An HttpCheck named `app` on `url`, closed on the way out."""
    check = HttpCheck(HttpSpec(name="app", url=url, status_min=status_min, status_max=status_max))
    try:
        yield check
    finally:
        await check.close()


async def failure(check: HttpCheck, *, bound: float = 10.0) -> CheckFailed:
    """Run the check, which must fail within `bound` seconds, and return how."""
    with pytest.raises(CheckFailed) as caught:
        async with asyncio.timeout(bound):
            await check.run()
    return caught.value


def passing(board: Board, name: str) -> bool:
    """Whether the board shows `name` passing (False before its first result)."""
    state = board.states.get(name)
    return state is not None and state.passing


async def test_passes_on_200_and_says_who_it_is(site: Site) -> None:
    """A 200 passes; the request carries the sidecar's own User-Agent."""
    async with http_check(site.url()) as check:
        assert check.name == "app"
        await check.run()
    assert site.target.paths == ["/livez"]
    assert site.target.user_agents == [f"health-sidecar/{__version__}"]


async def test_custom_range_passes_only_inside_it(site: Site) -> None:
    """With only 204 expected, a 204 passes; a 200 is unexpected_status (`expected=204`)."""
    async with http_check(site.url(), status_min=204, status_max=204) as check:
        site.target.status = 204
        await check.run()
        site.target.status = 200
        failed = await failure(check)
    assert failed.reason is Reason.UNEXPECTED_STATUS
    assert dict(failed.details) == {"status": "200", "expected": "204"}


async def test_server_error_is_unexpected_status_with_details_but_no_url(site: Site) -> None:
    """A 500 fails with unexpected_status, status and range in details, never the URL."""
    site.target.status = 500
    async with http_check(site.url("/livez?token=s3cret-t0ken")) as check:
        failed = await failure(check)
    assert failed.reason is Reason.UNEXPECTED_STATUS
    assert dict(failed.details) == {"status": "500", "expected": "200-399"}
    assert "s3cret-t0ken" not in repr(failed.details) + str(failed)


async def test_redirect_is_judged_by_its_status_and_not_followed(site: Site) -> None:
    """A 302 passes in the default range, and its target is never requested."""
    async with http_check(site.url("/moved")) as check:
        await check.run()
    async with http_check(site.url("/moved"), status_min=200, status_max=299) as check:
        failed = await failure(check)
    assert failed.reason is Reason.UNEXPECTED_STATUS
    assert dict(failed.details)["status"] == "302"
    assert site.target.paths == ["/moved", "/moved"]


async def test_hanging_server_times_out_at_the_bound_then_recovers(site: Site) -> None:
    """A handler that never answers is timeout at the prober's bound; the next run passes."""
    site.target.stall = True
    async with http_check(site.url()) as check:
        prober = CheckLoop(spec_of(check, CheckPolicy(timeout=0.5)), check, Board())
        started = time.monotonic()
        result = await prober.run_once()
        assert result.reason is Reason.TIMEOUT
        assert 0.4 <= time.monotonic() - started < 0.5 + SLACK
        site.target.stall = False
        assert (await prober.run_once()).ok


async def test_endless_body_does_not_hold_the_run(site: Site) -> None:
    """A body that never ends is read only up to a small bound; the run passes promptly."""
    async with http_check(site.url("/endless")) as check:
        async with asyncio.timeout(SLACK):
            await check.run()


async def test_nothing_listening_is_connection_refused() -> None:
    """A free port with no listener fails with connection_refused."""
    async with http_check(f"http://{LOOPBACK}:{free_port()}/livez") as check:
        assert (await failure(check)).reason is Reason.CONNECTION_REFUSED


async def test_unresolvable_name_is_dns_failure() -> None:
    """A host in the reserved .invalid domain fails with dns_failure."""
    async with http_check("http://no-such-host.invalid/livez") as check:
        assert (await failure(check)).reason is Reason.DNS_FAILURE


async def test_runs_reuse_one_connection_until_reset(site: Site) -> None:
    """Several runs use ONE server-side connection; reset() drops it, the next run opens one."""
    site.target.body_chunks = 3  # a real body to read through before the connection is reusable
    async with http_check(site.url()) as check:
        for _ in range(5):
            await check.run()
        assert len(site.target.peer_ports) == 5
        assert len(set(site.target.peer_ports)) == 1
        assert site.open_connections == 1

        await check.reset()
        await wait_until_async(lambda: site.open_connections == 0, timeout=5, message="dropped")
        await check.run()
        assert site.target.peer_ports[-1] != site.target.peer_ports[0]
        assert site.open_connections == 1


async def test_idle_connection_closed_by_the_server_is_not_a_failure(
    aiohttp_server: AiohttpServer,
) -> None:
    """A server that drops the kept-alive connection between runs costs a reconnect, not a fail."""
    target = Target()
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", target.handle)
    server = await aiohttp_server(app, keepalive_timeout=0.2)
    async with http_check(str(server.make_url("/livez"))) as check:
        for _ in range(3):
            await check.run()
            await asyncio.sleep(0.5)  # the server closes the idle connection meanwhile
    assert len(set(target.peer_ports)) == 3


async def test_close_releases_the_connection(site: Site) -> None:
    """close() ends the kept-alive connection promptly."""
    check = HttpCheck(HttpSpec(name="app", url=site.url()))
    await check.run()
    assert site.open_connections == 1
    async with asyncio.timeout(SLACK):
        await check.close()
    await wait_until_async(lambda: site.open_connections == 0, timeout=5, message="closed")
    await check.close()  # twice is harmless


async def test_environment_proxy_is_not_used(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY pointing nowhere does not affect a check: it goes straight to the target."""
    nowhere = f"http://{LOOPBACK}:{free_port()}"
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, nowhere)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    async with http_check(site.url()) as check:
        await check.run()
    assert site.target.paths == ["/livez"]


async def test_self_signed_certificate_is_tls_error(
    aiohttp_server: AiohttpServer, self_signed: tuple[Path, Path]
) -> None:
    """An https server whose certificate is not trusted fails with tls_error."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*self_signed)
    target = Target()
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", target.handle)
    server = await aiohttp_server(app, ssl=context)
    url = str(server.make_url("/livez"))
    assert url.startswith("https://")
    async with http_check(url) as check:
        assert (await failure(check)).reason is Reason.TLS_ERROR
    assert target.paths == []


async def test_server_not_speaking_http_is_network_error() -> None:
    """A listener that answers with something other than HTTP fails with network_error."""

    answered = asyncio.Event()

    async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read(4096)  # the request
            writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
            await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            answered.set()

    server = await asyncio.start_server(banner, LOOPBACK, 0)
    try:
        port = server.sockets[0].getsockname()[1]
        async with http_check(f"http://{LOOPBACK}:{port}/livez") as check:
            assert (await failure(check)).reason is Reason.NETWORK_ERROR
        # The handler must be done before the loop ends, or its socket outlives the test.
        await asyncio.wait_for(answered.wait(), 5)
    finally:
        server.close()


async def test_reset_mid_response_is_connection_reset(
    site: Site, make_fault_proxy: ProxyFactory
) -> None:
    """An RST while the body is arriving fails with connection_reset."""
    proxy = make_fault_proxy(LOOPBACK, site.server.port or 0)
    async with http_check(f"http://{LOOPBACK}:{proxy.port}/partial") as check:
        run = asyncio.create_task(check.run())
        async with asyncio.timeout(10):
            await site.target.partial_sent.wait()
        await asyncio.sleep(0.2)  # let the first bytes cross the proxy
        assert not run.done()
        await asyncio.to_thread(proxy.reset)
        with pytest.raises(CheckFailed) as caught:
            async with asyncio.timeout(10):
                await run
    assert caught.value.reason is Reason.CONNECTION_RESET


async def test_reset_on_connect_is_connection_reset(
    site: Site, make_fault_proxy: ProxyFactory
) -> None:
    """A path that resets every new connection fails with connection_reset."""
    proxy = make_fault_proxy(LOOPBACK, site.server.port or 0)
    await asyncio.to_thread(proxy.reset)
    async with http_check(f"http://{LOOPBACK}:{proxy.port}/livez") as check:
        assert (await failure(check)).reason is Reason.CONNECTION_RESET
    assert site.target.paths == []


async def test_prober_shows_status_failure_and_recovery_on_the_board(site: Site) -> None:
    """End to end: passing, then unexpected_status on a 503, then passing again."""
    board = Board()
    policy = CheckPolicy(interval=0.1, timeout=1.0, backoff_max=0.2)
    async with http_check(site.url()) as check:
        task = asyncio.create_task(CheckLoop(spec_of(check, policy), check, board).run())
        try:
            await wait_until_async(lambda: passing(board, "app"), timeout=5, message="pass")
            site.target.status = 503
            await wait_until_async(lambda: not passing(board, "app"), timeout=5, message="fail")
            last = board.states["app"].last
            assert last is not None
            assert last.reason is Reason.UNEXPECTED_STATUS
            site.target.status = 200
            await wait_until_async(lambda: passing(board, "app"), timeout=5, message="heal")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (aiohttp.ServerDisconnectedError(), Reason.CONNECTION_RESET),
        (aiohttp.ClientOSError(errno.ECONNRESET, "reset"), Reason.CONNECTION_RESET),
        (
            aiohttp.ClientConnectionResetError("write on a closed transport"),
            Reason.CONNECTION_RESET,
        ),
        (aiohttp.ClientPayloadError("cut short"), Reason.CONNECTION_RESET),
        (aiohttp.ServerTimeoutError(), Reason.TIMEOUT),
    ],
)
def test_client_errors_map_to_fixed_reasons(exc: BaseException, reason: Reason) -> None:
    """aiohttp's own errors map to the fixed reasons (the ones hard to provoke for real)."""
    assert classify(exc, HTTP) is reason


@pytest.mark.parametrize(
    "exc", [asyncio.CancelledError(), KeyboardInterrupt(), aiohttp.InvalidURL("x"), KeyError("x")]
)
def test_cancellation_and_bugs_are_never_classified(exc: BaseException) -> None:
    """Cancellation propagates; a bad URL or a bug is internal_error, not the target's fault."""
    assert classify(exc, HTTP) is None
