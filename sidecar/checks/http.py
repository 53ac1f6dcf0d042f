"""The HTTP check: GET the URL over one kept-alive connection; pass on a status in range.

Like kubelet's httpGet: redirects are not followed (a 3xx is judged by its own status), and the
body is not judged. Unlike kubelet, the connection is kept and reused between runs.
"""

from __future__ import annotations

from typing import Final

import aiohttp

from sidecar import __version__
from sidecar.checks import CheckFailed
from sidecar.checks.failures import HTTP, close_within, failures_as_reasons
from sidecar.checkspec import HttpSpec
from sidecar.state import Reason

USER_AGENT: Final = f"health-sidecar/{__version__}"
# The body is read (and discarded) only so the connection can be reused; a body longer than
# this is left unread, which makes aiohttp close the connection rather than keep it.
BODY_LIMIT_BYTES: Final = 64 * 1024
READ_CHUNK_BYTES: Final = 16 * 1024


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
        low, high = self._spec.status_min, self._spec.status_max
        return str(low) if low == high else f"{low}-{high}"

    async def run(self) -> None:
        with failures_as_reasons(HTTP):
            status = await self._get()
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
        await self.close()

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is None or session.closed:
            return
        # Closing starts at once (TLS connections are aborted, not shut down politely); only
        # the wait for the transports to report closed is cut short.
        await close_within(session.close(), lambda: None)


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
