"""The one structlog configuration: JSON lines by default, secrets scrubbed from every event."""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final, TextIO

import structlog
from aiohttp.http_exceptions import HttpProcessingError
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED: Final = "[REDACTED]"
# Free-text `error` values are cut to this length, after redaction: cut first, a secret split
# by the cut slips past the redactor (tests/test_secrets.py, the crashed check).
MAX_ERROR_CHARS: Final = 200
# Lines waiting for a slow log pipe (~250 KB at 250 bytes a line), on top of the pipe's own
# 64 KiB. A stalled pipe (the node's log pipeline stuck) must never block the event loop:
# beyond this many, lines are dropped and counted. Ten seconds of debug logging.
BUFFER_LINES: Final = 1024
# At exit, how long to keep trying to hand buffered lines to a pipe that does not move.
EXIT_FLUSH_SECONDS: Final = 0.5


class PipeWriter:
    """A file-like sink that never blocks its caller: lines queue in a bounded buffer that a
    daemon thread writes to the file descriptor.

    A full buffer drops the line and counts it; the next line accepted after drops is preceded
    by one `log.lines_dropped` line saying how many went missing there, so the gap is visible
    in place, once the pipe moves again. Lines are written with os.write: nothing is left in
    Python's own stdout buffer for interpreter exit to flush into a stuck pipe.
    """

    def __init__(self, stream: TextIO, *, capacity: int = BUFFER_LINES) -> None:
        self._stream = stream
        try:
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):
            self._fd = None  # an in-memory stream: written from the thread as text
        self._capacity = capacity
        self._lines: collections.deque[str] = collections.deque()
        self._ready = threading.Condition()
        self._dropping = 0
        self._dropped_total = 0
        self._busy = False
        self._closed = False
        self._thread = threading.Thread(target=self._drain, name="log-writer", daemon=True)
        self._thread.start()

    @property
    def dropped_total(self) -> int:
        return self._dropped_total

    def isatty(self) -> bool:
        return self._stream.isatty()

    def write(self, text: str) -> int:
        with self._ready:
            if len(self._lines) >= self._capacity:
                self._dropping += 1
                self._dropped_total += 1
                return 0
            if self._dropping:
                self._lines.append(_dropped_line(self._dropping))
                self._dropping = 0
            self._lines.append(text)
            self._ready.notify()
        return len(text)

    def flush(self) -> None:
        """Nothing to do on the caller's side: the thread writes as fast as the pipe takes."""

    def close(self, timeout: float = EXIT_FLUSH_SECONDS) -> bool:
        """Write what the pipe takes within `timeout`; True when everything was written."""
        deadline = time.monotonic() + timeout
        with self._ready:
            self._closed = True
            self._ready.notify()
            while self._lines or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._ready.wait(left)
        return True

    def _drain(self) -> None:
        while True:
            with self._ready:
                while not self._lines:
                    self._busy = False
                    self._ready.notify_all()
                    if self._closed:
                        return
                    self._ready.wait()
                batch = "".join(self._lines)
                self._lines.clear()
                self._busy = True
            self._write(batch)

    def _write(self, text: str) -> None:
        if self._fd is None:
            with contextlib.suppress(OSError, ValueError):
                self._stream.write(text)
                self._stream.flush()
            return
        data = text.encode("utf-8", "replace")
        while data:
            try:
                written = os.write(self._fd, data)
            except InterruptedError:
                continue
            except OSError:
                return  # the reader went away (EPIPE): nobody to tell
            data = data[written:]


def _dropped_line(count: int) -> str:
    """The line that marks a gap, in the same JSON shape as every other line."""
    event = {
        "dropped": count,
        "event": "log.lines_dropped",
        "level": "warning",
        "logger": "sidecar.logs",
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }
    return json.dumps(event) + "\n"


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
# The writer `configure()` put between the pipeline and stdout, if it did.
_live_writer: PipeWriter | None = None


def dropped_lines() -> int:
    """Log lines dropped so far because stdout did not keep up."""
    return _live_writer.dropped_total if _live_writer is not None else 0


def shutdown(timeout: float = EXIT_FLUSH_SECONDS) -> bool:
    """Flush buffered lines for at most `timeout` seconds; never waits on a stuck pipe beyond."""
    return _live_writer.close(timeout) if _live_writer is not None else True


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
    """Configure structlog, and route stdlib logging (aiohttp, asyncio) through it.

    Without `stream`, lines go to stdout through a PipeWriter, so a stalled log pipe cannot
    block the event loop; a given `stream` (tests) is written synchronously.
    """
    global _live_redactor, _live_writer  # noqa: PLW0603 -- one logging pipeline per process
    if _live_writer is not None:
        _live_writer.close(0)
        _live_writer = None
    # TextIO by duck typing: structlog and StreamHandler only call write, flush and isatty.
    sink: Any = stream
    if stream is None:
        sink = _live_writer = PipeWriter(sys.stdout)
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
            colors=sink.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
        tail: list[Processor] = [redact, _bound_error_text, renderer]
    else:
        renderer = structlog.processors.JSONRenderer()
        tail = [structlog.processors.format_exc_info, redact, _bound_error_text, renderer]
    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(), *tail],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        # One write() per line (PrintLogger writes the newline separately).
        logger_factory=structlog.WriteLoggerFactory(sink),
        cache_logger_on_first_use=True,
    )
    # Library records (aiohttp's server errors, asyncio's warnings) become JSON lines too,
    # through the same redaction, instead of bare tracebacks on stderr.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
    )
    handler = logging.StreamHandler(sink)
    handler.setFormatter(formatter)
    handler.addFilter(_not_a_client_parse_error)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Libraries are noisy at debug (every malformed request); keep them at warning or above.
    root.setLevel(max(numeric_level, logging.WARNING))
