"""The http kind: GET the URL over one kept-alive connection; pass on a status in range.

Like kubelet's httpGet: redirects are not followed (a 3xx is judged by its own status), and the
body is not judged. Unlike kubelet, the connection is kept and reused between runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal
from urllib.parse import urlsplit

import aiohttp

from sidecar import __version__
from sidecar.checks.failures import (
    SOCKET,
    Rules,
    classify,
    close_within,
    failures_as_reasons,
    socket_cause,
)
from sidecar.checkspec import CheckSpec, DatabaseTarget
from sidecar.fields import ABSENT, Fields, is_text, kind_of, shown
from sidecar.inputs import unprintable, valid_host
from sidecar.kinds import Built, Key, Kind
from sidecar.reasons import CheckFailed, Reason

USER_AGENT: Final = f"health-sidecar/{__version__}"
# The body is read (and discarded) only so the connection can be reused; a body longer than
# this is left unread, which makes aiohttp close the connection rather than keep it.
BODY_LIMIT_BYTES: Final = 64 * 1024
READ_CHUNK_BYTES: Final = 16 * 1024
# Passing status codes unless the check says otherwise: kubelet's own httpGet rule.
DEFAULT_STATUS: Final = (200, 399)
STATUS_RANGE: Final = (100, 599)
STATUS_RULE: Final = (
    f"must be a status code ({STATUS_RANGE[0]}-{STATUS_RANGE[1]}) or a range "
    f'"A-B" such as "{DEFAULT_STATUS[0]}-{DEFAULT_STATUS[1]}"'
)
URL_RULE: Final = "must be an http:// or https:// URL"
_STATUS_TEXT: Final = re.compile(r"\s*([0-9]{3})\s*(?:-\s*([0-9]{3})\s*)?")


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpSpec(CheckSpec):
    kind: ClassVar[Literal["http"]] = "http"
    url: str
    # Inclusive range of passing status codes.
    status_min: int = DEFAULT_STATUS[0]
    status_max: int = DEFAULT_STATUS[1]


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
        # The check loop bounds each run; a client timeout of our own could only fire first.
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


HTTP: Final[Rules] = (
    # Before ClientConnectorError, of which it is a kind (certificate errors included).
    (aiohttp.ClientSSLError, Reason.TLS_ERROR),
    (
        aiohttp.ClientConnectorError,
        lambda exc: classify(exc.os_error, SOCKET) or Reason.NETWORK_ERROR,  # type: ignore[attr-defined]
    ),
    # The server closed the connection before (or while) answering.
    (aiohttp.ServerDisconnectedError, Reason.CONNECTION_RESET),
    # The body was cut short; the socket error, when there was one, is the cause.
    (aiohttp.ClientPayloadError, lambda exc: socket_cause(exc) or Reason.CONNECTION_RESET),
    # The URL was validated at start; an invalid one here is a bug, not the target.
    (aiohttp.InvalidURL, None),
    # ClientOSError and ClientConnectionResetError are OSErrors with an errno.
    ((TimeoutError, OSError), lambda exc: classify(exc, SOCKET)),
    # Anything else the client raises (a malformed response, a bad header) means the far end
    # does not speak HTTP as expected.
    (aiohttp.ClientError, lambda exc: socket_cause(exc) or Reason.NETWORK_ERROR),
)


def _parse(fields: Fields, common: dict[str, Any], _database: DatabaseTarget) -> HttpSpec | None:
    # The URL itself is never quoted: it may carry a token or a password.
    url = fields.read(
        "url", is_text, URL_RULE, missing="missing; an http check needs one", got=kind_of
    )
    if url is not None and (problem := _url_problem(url)) is not None:
        fields.problem("url", problem)
        url = None
    status = _status_range(fields, "expect_status")
    if url is None or status is None:
        return None
    return HttpSpec(**common, url=url, status_min=status[0], status_max=status[1])


def _status_range(fields: Fields, key: str) -> tuple[int, int] | None:
    value = fields.raw.get(key, ABSENT)
    if value is ABSENT:
        return DEFAULT_STATUS
    low = high = 0  # refused below unless the value is a code or a range
    if isinstance(value, int) and not isinstance(value, bool):
        low = high = value
    elif isinstance(value, str) and (match := _STATUS_TEXT.fullmatch(value)):
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
    lowest, highest = STATUS_RANGE
    if not (lowest <= low <= highest and lowest <= high <= highest):
        fields.problem(key, f"{STATUS_RULE}, got {shown(value)}")
        return None
    if low > high:
        fields.problem(key, f"the range starts at {low}, above its end {high}")
        return None
    return (low, high)


def _url_problem(value: str) -> str | None:
    """Why `value` is not a usable http(s) URL, without quoting any of it."""
    if unprintable(value):
        return f"{URL_RULE} without whitespace or control characters"
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError on a port that is not a number
        hostname = parts.hostname
    except ValueError:
        return f"{URL_RULE}; this one is malformed (bad port or brackets)"
    if parts.scheme.lower() not in ("http", "https"):
        return f"{URL_RULE}; this one has another scheme or none"
    if "@" in parts.netloc:
        return (
            "must not hold user:password@: the check file is not a Secret "
            "(serve the probe path without authentication)"
        )
    if not hostname or not valid_host(hostname):
        return f"{URL_RULE} with a host name or address"
    return None


KIND: Final[Kind[HttpSpec]] = Kind(
    name="http",
    keys=(
        Key(
            "url",
            {
                "type": "string",
                "description": "http(s) URL to GET, without user:password@",
                # It may carry credentials by mistake: no copy of this schema quotes it.
                "writeOnly": True,
                "pattern": (
                    r"^https?://(\[[0-9A-Fa-f:.]+\]|[^/?#@\s:\[\]]+)(:[0-9]{1,5})?([/?#]\S*)?$"
                ),
            },
            required=True,
        ),
        Key(
            "expect_status",
            {
                "description": (
                    "Passing status: one code or an inclusive range A-B "
                    f"(default {DEFAULT_STATUS[0]}-{DEFAULT_STATUS[1]})"
                ),
                "oneOf": [
                    {"type": "integer", "minimum": STATUS_RANGE[0], "maximum": STATUS_RANGE[1]},
                    {"type": "string", "pattern": "^[1-5][0-9]{2}(-[1-5][0-9]{2})?$"},
                ],
            },
        ),
    ),
    parse=_parse,
    build=lambda spec, _needs: Built(HttpCheck(spec)),
    loader_only=(
        "a URL whose host name the resolver cannot encode (an empty or 64+ character label)",
        "an expect_status range that starts above its end",
    ),
)
