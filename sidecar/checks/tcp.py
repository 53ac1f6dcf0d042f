"""The TCP check: a connection to host:port is opened, then closed. Nothing is sent.

Also home of `classify_os_error`, the socket-level half of every network check's table.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import ssl
from typing import Final

from sidecar.checks import CheckFailed
from sidecar.checkspec import TcpSpec
from sidecar.state import Reason

# Closing sends FIN and waits for the transport to go; a peer that stalls must not hold a run.
CLOSE_TIMEOUT_SECONDS: Final = 1.0

_REFUSED: Final = frozenset({errno.ECONNREFUSED})
_RESET: Final = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED})
_TIMED_OUT: Final = frozenset({errno.ETIMEDOUT})


class TcpCheck:
    """Holds nothing between runs: each run is one connect and one close."""

    def __init__(self, spec: TcpSpec) -> None:
        self._spec = spec

    @property
    def name(self) -> str:
        return self._spec.name

    async def run(self) -> None:
        try:
            _, writer = await asyncio.open_connection(self._spec.host, self._spec.port)
        except BaseException as exc:
            reason = classify_os_error(exc)
            if reason is None:
                raise
            raise CheckFailed(reason) from None
        await close_writer(writer)

    async def reset(self) -> None:
        """Nothing is kept between runs, so there is nothing to drop."""

    async def close(self) -> None:
        """Nothing is kept between runs, so there is nothing to release."""


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close politely (FIN), but never wait more than CLOSE_TIMEOUT_SECONDS: then abort."""
    writer.close()
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
            await writer.wait_closed()
    except TimeoutError:
        writer.transport.abort()
    except OSError:
        # The connection was made, which is all this check asks; how it ended is not news.
        with contextlib.suppress(OSError):
            writer.transport.abort()


def classify_os_error(exc: BaseException) -> Reason | None:  # noqa: PLR0911 -- one flat table
    """Map a socket-level error to a fixed reason; None for anything that is not one.

    Cancellation and interpreter exits are never classified: they must propagate.
    """
    if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
        return None
    match exc:
        case TimeoutError():
            return Reason.TIMEOUT
        case ConnectionRefusedError():
            return Reason.CONNECTION_REFUSED
        case ConnectionResetError() | BrokenPipeError() | ConnectionAbortedError():
            return Reason.CONNECTION_RESET
        case socket.gaierror():
            return Reason.DNS_FAILURE
        case ssl.SSLError() | ssl.CertificateError():
            return Reason.TLS_ERROR
        case OSError():
            return _classify_errno(exc)
    return None


def _classify_errno(exc: OSError) -> Reason:
    """A plain OSError (or a library's subclass of it) judged by its errno."""
    if exc.errno in _REFUSED:
        return Reason.CONNECTION_REFUSED
    if exc.errno in _RESET:
        return Reason.CONNECTION_RESET
    if exc.errno in _TIMED_OUT:
        return Reason.TIMEOUT
    # A name with several addresses that all failed differently: asyncio (3.11) raises one
    # OSError without an errno, the individual errors only in its message. Any refusal among
    # them means something answered "nothing listens here", the most telling of the lot.
    if exc.errno is None and f"[Errno {errno.ECONNREFUSED}]" in str(exc):
        return Reason.CONNECTION_REFUSED
    return Reason.NETWORK_ERROR
