"""The one structlog configuration: JSON lines by default, secrets scrubbed from every event."""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
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
        self._fd = stream.fileno()
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


# Values of these keys are our own fixed vocabulary: event names, check names, kinds, reasons,
# states, levels. They are never rewritten, whatever the password is: a password that is also a
# word ("sidecar", "postgres", "ready") must neither corrupt a line nor show itself by the gap
# it leaves in a word everyone knows. Keys themselves are never rewritten either.
VOCABULARY_KEYS: Final = frozenset(
    {
        "event",
        "level",
        "logger",
        "timestamp",
        "check",
        "name",
        "kind",
        "reason",
        "from",
        "to",
        "outcome",
        "signal",
        "variable",
        "did_you_mean",
        "source",
        "driver",
        # Formatted stack frames (file, line, function, source line): our code, no data.
        "stack",
    }
)
# A record from a library (aiohttp, asyncio): its `event` is the library's message, free text
# that may quote anything, so it is scrubbed like any other text.
FOREIGN_VOCABULARY_KEYS: Final = VOCABULARY_KEYS - {"event"}
# A URL in free text: its userinfo and its password parameters are secrets by position,
# whatever they hold, so they go even when nobody registered them (another service's DSN).
_URL: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*")
# `password=...` (in a URL's query, or a libpq keyword/value DSN): the value is a secret.
_PASSWORD_PARAMETER: Final = re.compile(
    r"(\b[A-Za-z_]*password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&'\"]+)", re.IGNORECASE
)
# A secret is replaced where it stands as a token of its own: not inside a longer name, path
# segment or word ("postgres" in "postgresql", "sidecar" in "health-sidecar"), which would
# only rewrite text that holds no secret, and point at the password by doing so.
_WORD_CHARS: Final = r"\w.-"


class Redactor:
    """Scrub known secrets (a DSN, its password, PGPASSWORD) and anything that is a secret by
    position (a URL's password, a `password=` value) from every event, structurally.

    Vocabulary values (VOCABULARY_KEYS) and keys are kept as written. Other text is scrubbed:
    a URL's userinfo password and `password=` values are replaced; a known DSN is replaced
    whole; a known password is replaced where it stands as a token, outside URLs (which were
    handled by their structure). An exception is formatted here, so that only its messages are
    scrubbed and its stack frames stay readable. Runs last before rendering.
    """

    def __init__(
        self,
        secrets: Iterable[str] | SecretSet = (),
        *,
        vocabulary: frozenset[str] = VOCABULARY_KEYS,
    ) -> None:
        self.secrets = secrets if isinstance(secrets, SecretSet) else SecretSet(secrets)
        self._vocabulary = vocabulary

    def add(self, *secrets: str) -> None:
        """Redact these too from now on (a rotated DSN's password, before anything logs it)."""
        self.secrets.add(*secrets)

    def foreign(self) -> Redactor:
        """The redactor of library records, with the same secrets: their `event` is free text."""
        return Redactor(self.secrets, vocabulary=FOREIGN_VOCABULARY_KEYS)

    def scrub(self, text: str) -> str:
        """Free text with every secret in it replaced."""
        return self.secrets.known.scrub(text)

    def _value(self, key: str, value: Any) -> Any:
        if key in self._vocabulary:
            return value
        if isinstance(value, str):
            # A value filed under a password key is a secret by position, known or not.
            return REDACTED if "password" in key.lower() else self.scrub(value)
        if isinstance(value, dict):
            return {k: self._value(k, v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._value(key, v) for v in value]
        if isinstance(value, BaseException):
            return self.scrub(repr(value))
        return value

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        exc = _exception_of(event_dict.pop("exc_info", None))
        scrubbed = {key: self._value(key, value) for key, value in event_dict.items()}
        if exc is not None:
            scrubbed["exception"] = _ScrubbedTraceback(self.scrub).text(exc)
        return scrubbed


class SecretSet:
    """The secrets a pipeline redacts, shared by its redactors; extended while running."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.known = _Known.of(secrets)

    def add(self, *secrets: str) -> None:
        # One reference swap: a record formatted meanwhile (stdlib logging may run in another
        # thread) sees either the old set or the new one, never a half-built one.
        self.known = _Known.of((*self.known.secrets, *secrets))


@dataclass(frozen=True, slots=True)
class _Known:
    """The registered secrets, and the one pattern that finds them as tokens."""

    secrets: tuple[str, ...]
    tokens: re.Pattern[str] | None

    @classmethod
    def of(cls, secrets: Iterable[str]) -> _Known:
        # Longest first, so a DSN is replaced whole before its password part.
        unique = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))
        if not unique:
            return cls((), None)
        either = "|".join(re.escape(s) for s in unique)
        pattern = re.compile(rf"(?<![{_WORD_CHARS}])(?:{either})(?![{_WORD_CHARS}])")
        return cls(unique, pattern)

    def scrub(self, text: str) -> str:
        # Known DSNs (and any secret long enough to contain a URL) first, whole.
        for secret in self.secrets:
            if "://" in secret and secret in text:
                text = text.replace(secret, REDACTED)
        if "://" in text:
            pieces = []
            last = 0
            for match in _URL.finditer(text):
                pieces.append(self._tokens(text[last : match.start()]))
                pieces.append(_url_without_password(match.group(0)))
                last = match.end()
            pieces.append(self._tokens(text[last:]))
            text = "".join(pieces)
        else:
            text = self._tokens(text)
        if "password" in text.lower():
            text = _PASSWORD_PARAMETER.sub(rf"\g<1>{REDACTED}", text)
        return text

    def _tokens(self, text: str) -> str:
        if self.tokens is None or not text:
            return text
        return self.tokens.sub(REDACTED, text)


def _url_without_password(url: str) -> str:
    """A URL with the password of its userinfo replaced. The userinfo ends at the last '@'
    before the query: a raw '@' or '/' in a password must not leave a piece of it behind."""
    scheme, _, rest = url.partition("://")
    head, sep, tail = rest.partition("?")
    at = head.rfind("@")
    if at < 0:
        return url
    user, colon, _password = head[:at].partition(":")
    if not colon:
        return url
    return f"{scheme}://{user}:{REDACTED}{head[at:]}{sep}{tail}"


def _exception_of(exc_info: Any) -> BaseException | None:
    """The exception an event's `exc_info` names (an exception, a sys.exc_info() tuple, True)."""
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple):
        return exc_info[1] if isinstance(exc_info[1], BaseException) else None
    if exc_info:
        return sys.exc_info()[1]
    return None


@dataclass(frozen=True, slots=True)
class _ScrubbedTraceback:
    """A plain traceback whose exception messages are scrubbed and whose frames are not:
    file names, line numbers and source lines are our code, and stay readable."""

    scrub: Any

    def text(self, exc: BaseException) -> str:
        return "".join(self._parts(traceback.TracebackException.from_exception(exc))).rstrip()

    def _parts(self, te: traceback.TracebackException) -> Iterator[str]:
        if te.__cause__ is not None:
            yield from self._parts(te.__cause__)
            yield "\nThe above exception was the direct cause of the following exception:\n\n"
        elif te.__context__ is not None and not te.__suppress_context__:
            yield from self._parts(te.__context__)
            yield "\nDuring handling of the above exception, another exception occurred:\n\n"
        if te.stack:
            yield "Traceback (most recent call last):\n"
            yield from te.stack.format()
        yield self.scrub("".join(te.format_exception_only()))


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


def _standard_output() -> TextIO:
    """stdout; stderr when the process was started with stdout closed (`>&-`, a supervisor
    that gives it none), where Python leaves sys.stdout None; else nowhere. A closed stdout
    must not keep the sidecar from answering probes (tests/test_surroundings.py)."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            return stream
    return open(os.devnull, "w")  # lives as long as the process


@dataclass(frozen=True, slots=True)
class Pipeline:
    """What `configure()` built: its redactor, and the writer it put before stdout (if any)."""

    redactor: Redactor
    writer: PipeWriter | None = None

    def add_secrets(self, *secrets: str) -> None:
        """Register secrets that appeared after start (a rotated DSN) with the redactor.

        Called by the DSN file watcher before the new DSN is used or could be logged."""
        self.redactor.add(*secrets)

    def dropped_lines(self) -> int:
        """Log lines dropped so far because stdout did not keep up."""
        return self.writer.dropped_total if self.writer is not None else 0

    def shutdown(self, timeout: float = EXIT_FLUSH_SECONDS) -> bool:
        """Flush buffered lines for at most `timeout` seconds; never waits on a stuck pipe."""
        return self.writer.close(timeout) if self.writer is not None else True


def configure(
    *,
    level: str = "info",
    fmt: str = "json",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> Pipeline:
    """Configure structlog, and route stdlib logging (aiohttp, asyncio) through it; return
    the pipeline's redactor and writer. Call once per process: structlog's configuration and
    the root logger are process-wide.

    Without `stream`, lines go to stdout through a PipeWriter, so a stalled log pipe cannot
    block the event loop; a given `stream` (a file, a buffer) is written synchronously.
    """
    writer = PipeWriter(_standard_output()) if stream is None else None
    # TextIO by duck typing: structlog and StreamHandler only call write, flush and isatty.
    sink: Any = writer or stream
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    redact = Redactor(secrets)
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
    else:
        renderer = structlog.processors.JSONRenderer()
    # The redactor formats exceptions itself (frames kept, messages scrubbed), for both formats:
    # nothing is left for the renderer to format after redaction.
    tail: list[Processor] = [redact, _bound_error_text, renderer]
    foreign_tail: list[Processor] = [redact.foreign(), _bound_error_text, renderer]
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
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *foreign_tail],
    )
    handler = logging.StreamHandler(sink)
    handler.setFormatter(formatter)
    handler.addFilter(_not_a_client_parse_error)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Libraries are noisy at debug (every malformed request); keep them at warning or above.
    root.setLevel(max(numeric_level, logging.WARNING))
    # Python warnings (asyncpg's about a ~/.pgpass readable by others, say) would be bare
    # lines on stderr: JSON lines through the same redaction instead.
    logging.captureWarnings(True)
    return Pipeline(redact, writer)
