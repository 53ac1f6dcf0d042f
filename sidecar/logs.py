"""The one structlog configuration: JSON lines by default, secrets scrubbed from every event."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any, Final, TextIO

import structlog
from aiohttp.http_exceptions import HttpProcessingError
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED: Final = "[REDACTED]"
# Free-text `error` values are cut to this length, after redaction: cut first, a secret split
# by the cut slips past the redactor (tests/test_secrets.py, the crashed check).
MAX_ERROR_CHARS: Final = 200


class Redactor:
    """Replace every known secret (DSN, password) in every string value of an event.

    Runs last before rendering, after exceptions are formatted, so a secret that slipped
    into an exception message or a traceback is scrubbed too.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets: list[str] = []
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        """Redact these too from now on (a rotated DSN's password, before anything logs it)."""
        merged = {*self._secrets, *(s for s in secrets if s)}
        # Longest first, so a DSN is replaced whole before its password part. One reference
        # swap: a record formatted meanwhile (stdlib logging may run in another thread) sees
        # either the old list or the new one, never a half-built one.
        self._secrets = sorted(merged, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {k: self._value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._value(v) for v in value]
        if isinstance(value, BaseException):
            return self.scrub(repr(value))
        return value

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        if not self._secrets:
            return event_dict
        return {key: self._value(value) for key, value in event_dict.items()}


def _bound_error_text(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """Cut a long `error` value (an exception's message) to MAX_ERROR_CHARS."""
    error = event_dict.get("error")
    if isinstance(error, str) and len(error) > MAX_ERROR_CHARS:
        event_dict["error"] = error[:MAX_ERROR_CHARS] + "..."
    return event_dict


def _not_a_client_parse_error(record: logging.LogRecord) -> bool:
    """Drop aiohttp's "Error handling request" records for requests it could not parse.

    aiohttp answers those with a 400 itself and logs most of them at ERROR with a traceback;
    they are the client's error, not ours, and any client could flood the log with them
    (tests/test_hostile_http.py, garbage). Errors raised by our handlers still get through.
    """
    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, HttpProcessingError)


# The redactor of the pipeline `configure()` built last; `add_secrets` extends it.
_live_redactor = Redactor(())


def add_secrets(*secrets: str) -> None:
    """Register secrets that appeared after start (a rotated DSN) with the live redactor.

    Called by the DSN file watcher before the new DSN is used or could be logged. Secrets added
    before `configure()` are not carried into the pipeline it builds: pass those as `secrets=`.
    """
    _live_redactor.add(*secrets)


def configure(
    *,
    level: str = "info",
    fmt: str = "json",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    """Configure structlog, and route stdlib logging (aiohttp, asyncio) through it."""
    global _live_redactor  # noqa: PLW0603 -- one logging pipeline per process, like structlog's
    stream = stream or sys.stdout
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    redact = _live_redactor = Redactor(secrets)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if fmt == "console":
        # Plain tracebacks: rich's pretty tracebacks would print local variables.
        renderer = structlog.dev.ConsoleRenderer(
            colors=stream.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
        tail: list[Processor] = [redact, _bound_error_text, renderer]
    else:
        renderer = structlog.processors.JSONRenderer()
        tail = [structlog.processors.format_exc_info, redact, _bound_error_text, renderer]
    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(), *tail],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
    # Library records (aiohttp's server errors, asyncio's warnings) become JSON lines too,
    # through the same redaction, instead of bare tracebacks on stderr.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(_not_a_client_parse_error)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Libraries are noisy at debug (every malformed request); keep them at warning or above.
    root.setLevel(max(numeric_level, logging.WARNING))
