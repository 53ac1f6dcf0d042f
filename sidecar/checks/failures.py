"""One failure classifier for every kind of check: an exception in, a fixed `Reason` out.

Each kind's module has a table of (exception types, outcome) rules, read top to bottom: the
first rule whose types match decides. An outcome is a reason, or a function of the exception for
the cases that must look inside it (an errno, a cause). `None` means "not ours to judge" (a bug,
or an error the configuration should have refused): the check loop counts it as internal_error.
Cancellation and interpreter exits are never classified: they must propagate.

Also the one bound on closing a connection, so that shutdown never waits on a hung peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator
from typing import Final, TypeAlias

from sidecar.reasons import CheckFailed, Reason

# Closing politely (FIN, Terminate) waits for the peer; never longer than this, then abort.
CLOSE_TIMEOUT_SECONDS: Final = 1.0

Outcome: TypeAlias = Reason | Callable[[BaseException], "Reason | None"] | None
Rules: TypeAlias = tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], Outcome], ...]

_REFUSED: Final = frozenset({errno.ECONNREFUSED})
_RESET: Final = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED})
_TIMED_OUT: Final = frozenset({errno.ETIMEDOUT})


def classify(exc: BaseException, rules: Rules) -> Reason | None:
    """The reason the first matching rule gives; None for cancellation and unmatched errors."""
    if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
        return None
    for types, outcome in rules:
        if isinstance(exc, types):
            return outcome(exc) if callable(outcome) else outcome
    return None


@contextlib.contextmanager
def failures_as_reasons(rules: Rules) -> Iterator[None]:
    """Turn a classified exception into CheckFailed; let everything else propagate."""
    try:
        yield
    except CheckFailed:
        raise
    except BaseException as exc:
        reason = classify(exc, rules)
        if reason is None:
            raise
        raise CheckFailed(reason) from None


async def close_within(
    closing: Awaitable[object],
    abort: Callable[[], object],
    errors: tuple[type[BaseException], ...] = (OSError,),
) -> None:
    """Await a polite close for at most CLOSE_TIMEOUT_SECONDS; abort on a timeout or `errors`."""
    caught: tuple[type[BaseException], ...] = (TimeoutError, *errors)
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
            await closing
    except caught:
        # How the connection ended is not news: it is being dropped either way.
        with contextlib.suppress(OSError):
            abort()


def _by_errno(exc: BaseException) -> Reason:
    """A plain OSError (or a library's subclass of it) judged by its errno."""
    code = getattr(exc, "errno", None)
    if code in _REFUSED:
        return Reason.CONNECTION_REFUSED
    if code in _RESET:
        return Reason.CONNECTION_RESET
    if code in _TIMED_OUT:
        return Reason.TIMEOUT
    # A name with several addresses that all failed differently: asyncio (3.11) raises one
    # OSError without an errno, the individual errors only in its message. Any refusal among
    # them means something answered "nothing listens here", the most telling of the lot.
    if code is None and f"[Errno {errno.ECONNREFUSED}]" in str(exc):
        return Reason.CONNECTION_REFUSED
    return Reason.NETWORK_ERROR


SOCKET: Final[Rules] = (
    (TimeoutError, Reason.TIMEOUT),
    (ConnectionRefusedError, Reason.CONNECTION_REFUSED),
    ((ConnectionResetError, BrokenPipeError, ConnectionAbortedError), Reason.CONNECTION_RESET),
    (socket.gaierror, Reason.DNS_FAILURE),
    ((ssl.SSLError, ssl.CertificateError), Reason.TLS_ERROR),
    (OSError, _by_errno),
)


def socket_cause(exc: BaseException) -> Reason | None:
    """The reason of the first socket-level error in the cause chain, if there is one."""
    seen: set[int] = set()
    cause = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError | TimeoutError):
            return classify(cause, SOCKET)
        cause = cause.__cause__ or cause.__context__
    return None
