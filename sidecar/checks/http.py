"""The HTTP check: GET the URL over one kept-alive connection; pass on a status in range.

Like kubelet's httpGet: redirects are not followed (a 3xx is judged by its own status), and the
body is not judged. Unlike kubelet, the connection is kept and reused between runs.
"""

from __future__ import annotations

import asyncio
from typing import Final

import aiohttp

from sidecar import __version__
from sidecar.checks import CheckFailed
from sidecar.checks.tcp import classify_os_error
from sidecar.checkspec import HttpSpec
from sidecar.state import Reason

USER_AGENT: Final = f"health-sidecar/{__version__}"
# The body is read (and discarded) only so the connection can be reused; a body longer than
# this is left unread, which makes aiohttp close the connection rather than keep it.
BODY_LIMIT_BYTES: Final = 64 * 1024
READ_CHUNK_BYTES: Final = 16 * 1024
# Closing the session closes its connection; never wait longer than this for it to go.
CLOSE_TIMEOUT_SECONDS: Final = 1.0


class HttpCheck:
    """Owns one ClientSession with at most one connection; both are dropped after a failure."""

    def __init__(self, spec: HttpSpec) -> None:
        self._spec = spec
        self._session: aiohttp.ClientSession | None = None

    @property
    def name(self) -> str:
        return self._spec.name

    @property
    def expected(self) -> str:
        """The passing range, as shown in failure details."""
        return f"{self._spec.status_min}-{self._spec.status_max}"

    async def run(self) -> None:
        try:
            status = await self._get()
        except CheckFailed:
            raise
        except BaseException as exc:
            reason = classify(exc)
            if reason is None:
                raise
            raise CheckFailed(reason) from None
        if not self._spec.status_min <= status <= self._spec.status_max:
            # No URL in the details: its query string may carry a token.
            raise CheckFailed(
                Reason.UNEXPECTED_STATUS, {"status": str(status), "expected": self.expected}
            )

    async def _get(self) -> int:
        session = self._session
        if session is None or session.closed:
            # Created here, not in __init__: a session belongs to the loop that runs it.
            session = self._session = _new_session()
        async with session.get(self._spec.url, allow_redirects=False) as response:
            await _drain(response)
            return response.status

    async def reset(self) -> None:
        """Drop the session and its connection; the next run starts afresh."""
        await self._close_session()

    async def close(self) -> None:
        await self._close_session()

    async def _close_session(self) -> None:
        session, self._session = self._session, None
        if session is None or session.closed:
            return
        try:
            # Closing starts at once (TLS connections are aborted, not shut down politely);
            # only the wait for the transports to report closed is cut short.
            async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                await session.close()
        except (TimeoutError, OSError):
            pass


def _new_session() -> aiohttp.ClientSession:
    # limit=1: one connection per check, kept alive between runs. One the server has closed
    # while idle is not a failure: aiohttp drops it, or retries a GET once on a reused
    # connection that turns out to be closed.
    connector = aiohttp.TCPConnector(limit=1)
    return aiohttp.ClientSession(
        connector=connector,
        # A loopback check must not be sent to HTTP_PROXY, and no .netrc applies.
        trust_env=False,
        # The prober bounds each run; a client timeout of our own could only fire first.
        timeout=aiohttp.ClientTimeout(total=None, connect=None, sock_read=None, sock_connect=None),
        headers={"User-Agent": USER_AGENT},
        # A probe must not accumulate state: no cookies, and the body is never decoded.
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
    )


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read and discard up to BODY_LIMIT_BYTES, so a small body leaves the connection reusable."""
    left = BODY_LIMIT_BYTES
    while left > 0:
        chunk = await response.content.read(min(READ_CHUNK_BYTES, left))
        if not chunk:
            return
        left -= len(chunk)


def classify(exc: BaseException) -> Reason | None:  # noqa: PLR0911 -- one flat table
    """Map an aiohttp (or socket) error to a fixed reason; None for what is not ours to judge.

    Cancellation and interpreter exits are never classified: they must propagate.
    """
    if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
        return None
    match exc:
        case aiohttp.ClientSSLError():
            # Before ClientConnectorError, of which it is a kind (certificate errors included).
            return Reason.TLS_ERROR
        case aiohttp.ClientConnectorError():
            return classify_os_error(exc.os_error) or Reason.NETWORK_ERROR
        case aiohttp.ServerDisconnectedError():
            # The server closed the connection before (or while) answering.
            return Reason.CONNECTION_RESET
        case aiohttp.ClientPayloadError():
            # The body was cut short; the socket error, when there was one, is the cause.
            return _classify_cause(exc) or Reason.CONNECTION_RESET
        case aiohttp.InvalidURL():
            # The URL was validated at start; an invalid one here is a bug, not the target.
            return None
        case TimeoutError() | OSError():
            # ClientOSError and ClientConnectionResetError are OSErrors with an errno.
            return classify_os_error(exc)
        case aiohttp.ClientError():
            # Anything else the client raises (a malformed response, a bad header) means the
            # far end does not speak HTTP as expected.
            return _classify_cause(exc) or Reason.NETWORK_ERROR
    return None


def _classify_cause(exc: BaseException) -> Reason | None:
    """The reason of the first socket-level error in the cause chain, if there is one."""
    seen: set[int] = set()
    cause = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError | TimeoutError):
            return classify_os_error(cause)
        cause = cause.__cause__ or cause.__context__
    return None
