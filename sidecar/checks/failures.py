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
import os
import re
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
def failures_as_reasons(
    rules: Rules, cause: Callable[[BaseException], str | None] | None = None
) -> Iterator[None]:
    """Turn a classified exception into CheckFailed, with a `cause` in its details when one
    can be told (the kind's own `cause`, else cause_of); let everything else propagate."""
    try:
        yield
    except CheckFailed:
        raise
    except BaseException as exc:
        reason = classify(exc, rules)
        if reason is None:
            raise
        said = (cause or cause_of)(exc)
        raise CheckFailed(reason, {"cause": said} if said else None) from None


# How deep to look into an exception's __cause__/__context__ chain for the telling one.
_CHAIN_DEPTH: Final = 5
# Words a cause is made of, at most; a longer text is cut.
MAX_CAUSE_CHARS: Final = 80
# An errno inside a message that has no errno of its own (asyncio's "Multiple exceptions").
_ERRNO_IN_TEXT: Final = re.compile(r"\[Errno (\d+)\]")


def cause_of(exc: BaseException) -> str | None:
    """A few words on why a connection failed, for `details.cause`; None when nothing useful.

    Only fixed vocabularies are used, never an exception's own text: OpenSSL's verification
    messages (cut before any name they quote) and reason codes, the C library's errno and
    resolver texts, a class name. So a cause can hold no host, user, DSN or password.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    for _ in range(_CHAIN_DEPTH):
        if current is None or id(current) in seen:
            return None
        seen.add(id(current))
        cause = _own_cause(current)
        if cause is not None:
            return cause[:MAX_CAUSE_CHARS]
        current = current.__cause__ or current.__context__
    return None


def _own_cause(exc: BaseException) -> str | None:
    if isinstance(exc, ssl.SSLError):
        return _tls_cause(exc)
    if isinstance(exc, socket.gaierror):
        return "name lookup failed"
    if isinstance(exc, OSError) and not isinstance(exc, TimeoutError):
        code = exc.errno
        if code is None:
            found = _ERRNO_IN_TEXT.search(str(exc))
            code = int(found.group(1)) if found else None
        return _errno_text(code)
    return None  # a timeout's reason says it all; other errors are for the kind to word


def _tls_cause(exc: ssl.SSLError) -> str:
    # aiohttp wraps the ssl module's error in one of its own (an SSLError too, without the
    # verification message); the wrapped one tells.
    inner = getattr(exc, "certificate_error", None) or getattr(exc, "os_error", None)
    if isinstance(inner, ssl.SSLError) and inner is not exc:
        return _tls_cause(inner)
    if isinstance(exc, ssl.SSLCertVerificationError):
        # "Hostname mismatch, certificate is not valid for 'db'." -> "hostname mismatch"
        verified = getattr(exc, "verify_message", None) or ""
        message = re.split(r"[,(:]", verified)[0].strip(" .").lower()
        return f"certificate verify failed: {message}" if message else "certificate verify failed"
    # OpenSSL's reason code, e.g. TLSV1_ALERT_UNKNOWN_CA -> "tlsv1 alert unknown ca".
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and re.fullmatch(r"[A-Z0-9_]+", reason):
        return f"TLS: {reason.lower().replace('_', ' ')}"
    return "TLS handshake failed"


def _errno_text(code: int | None) -> str | None:
    """The C library's text for an errno ("connection refused"), never the exception's own."""
    if not isinstance(code, int):
        return None
    try:
        text = os.strerror(code)
    except ValueError:
        return None
    return text.lower() if text and not text.startswith("Unknown error") else None


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
