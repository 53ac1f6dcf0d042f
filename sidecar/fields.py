"""The check file's keys: their tables, typed reads of one mapping, and how a value is shown.

A bad value is one problem line naming the key, never an exception, so that every key is judged
even after the first problem. A line quotes a refused value only when it cannot be a secret
(names, kinds, numbers, hosts, paths): a DSN, a URL or a password is described, not shown.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Final
from urllib.parse import urlsplit

from sidecar.checkspec import DEFAULT_STATUS, CheckPolicy
from sidecar.inputs import read_head, valid_host
from sidecar.options import PER_CHECK, PORT, PORT_RULE, Setting

# The timing keys of `defaults:` and of each check: the SIDECAR_* settings' own ranges.
TIMING: Final[dict[str, Setting]] = {str(s.file_key): s for s in PER_CHECK}
COMMON_KEYS: Final = ("name", "kind", "criticality", *TIMING)
KIND_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "postgres": (
        "dsn",
        "dsn_file",
        "require_primary",
        "allow_replica",
        "max_replica_lag_seconds",
        "alembic_revision",
        "query",
        "expect",
        "ca_file",
        "cert_file",
        "key_file",
    ),
    "http": ("url", "expect_status"),
    "tcp": ("host", "port"),
}
STATUS_RANGE: Final = (100, 599)
STATUS_RULE: Final = (
    f"must be a status code ({STATUS_RANGE[0]}-{STATUS_RANGE[1]}) or a range "
    f'"A-B" such as "{DEFAULT_STATUS[0]}-{DEFAULT_STATUS[1]}"'
)
REVISION_RULE: Final = (
    "must be a revision id as text, or a list of them (quote one that looks like a number)"
)
_STATUS_TEXT: Final = re.compile(r"\s*([0-9]{3})\s*(?:-\s*([0-9]{3})\s*)?")
_SHOWN_CHARS: Final = 40

# A key the mapping does not set (None is a value: YAML's null).
ABSENT: Final = object()


# ---- the keys of one mapping --------------------------------------------------------------------


class Fields:
    """Typed reads of one mapping's keys. A bad value appends one problem line and reads as
    None (or the default), so that every key is judged even after the first problem."""

    def __init__(self, where: str, raw: Mapping[Any, Any], problems: list[str]) -> None:
        self.where = where
        self.raw = raw
        self.problems = problems
        self._refused: set[str] = set()

    def problem(self, key: str, message: str) -> None:
        self._refused.add(key)
        self.problems.append(f"{self.where}: {key}: {message}")

    def valid(self, key: str) -> bool:
        """False when `key` has been refused (its dependants then stay quiet)."""
        return key not in self._refused

    def refuse_unknown_keys(self, kind: str | None) -> None:
        """Unknown keys, and keys of another kind (`url` on a postgres check)."""
        own = (*COMMON_KEYS, *KIND_KEYS[kind]) if kind else None
        every = (*COMMON_KEYS, *(key for keys in KIND_KEYS.values() for key in keys))
        for key in self.raw:
            if key in COMMON_KEYS or (own is not None and key in own):
                continue
            owner = next((k for k, keys in KIND_KEYS.items() if key in keys), None)
            if owner is not None:
                if kind is not None:  # unknown kind: which keys belong is unknown too
                    self.problems.append(
                        f"{self.where}: {key}: not {_a(kind)} setting (it belongs to {_a(owner)} "
                        "check)"
                    )
                continue
            guess = (
                difflib.get_close_matches(key, own or every, n=1) if isinstance(key, str) else []
            )
            hint = f"; did you mean {guess[0]!r}?" if guess else ""
            if not guess and own is not None:
                hint = f"; {_a(str(kind))} check takes: {', '.join(sorted(own))}"
            self.problems.append(f"{self.where}: unknown key {shown_key(key)}{hint}")

    def policy(self, base: CheckPolicy) -> CheckPolicy:
        """`base`, with the timing keys this mapping sets."""
        found = {key: self.number(key, setting) for key, setting in TIMING.items()}
        changes: dict[str, Any] = {
            TIMING[key].field: value for key, value in found.items() if value is not None
        }
        return replace(base, **changes)

    def number(self, key: str, rule: Setting) -> float | int | None:
        """The key's number within `rule`'s range (a float unless whole); None if absent."""
        value = self.raw.get(key, ABSENT)
        if value is ABSENT:
            return None
        whole = rule.type == "whole"
        # bool is an int in Python; `true` is not a number in a config file.
        if isinstance(value, bool) or not isinstance(value, int if whole else int | float):
            what = "a whole number" if whole else "a number"
            self.problem(key, f"must be {what}, got {shown(value)}")
            return None
        if not rule.in_range(value):
            self.problem(key, f"{rule.rule}, got {shown(value)}")
            return None
        return value if whole else float(value)

    def boolean(self, key: str) -> bool:
        value = self.raw.get(key, False)
        if not isinstance(value, bool):
            self.problem(key, f"must be true or false, got {shown(value)}")
            return False
        return value

    def choice(self, key: str, allowed: tuple[str, ...], default: str) -> str:
        value = self.raw.get(key, default)
        if not isinstance(value, str) or value not in allowed:
            self.problem(key, f"must be one of {', '.join(allowed)}, got {shown(value)}")
            return default
        return value

    def query(self, key: str) -> str | None:
        value = self.raw.get(key, ABSENT)
        if value is ABSENT:
            return None
        if not isinstance(value, str) or not value.strip():
            # Not quoted: a query is long, and the type is what went wrong.
            what = "empty text" if isinstance(value, str) else kind_of(value)
            self.problem(key, f"must be an SQL query as text, got {what}")
            return None
        return value

    def expected_text(self, key: str) -> str | None:
        value = self.raw.get(key, ABSENT)
        if value is ABSENT:
            return None
        if not isinstance(value, str):
            # YAML reads `expect: true` as a boolean and `expect: 1` as a number; the check
            # compares text, so the quotes are required rather than guessed.
            self.problem(key, f'must be text (quote it: expect: "..."), got {shown(value)}')
            return None
        return value

    def path(self, key: str) -> str | None:
        value = self.raw.get(key, ABSENT)
        if value is ABSENT:
            return None
        if (
            not isinstance(value, str)
            or not value.strip()
            or any(ord(ch) < 32 or ord(ch) == 127 for ch in value)
            or not _utf8(value)
        ):
            self.problem(key, f"must be a file path, got {shown(value)}")
            return None
        return value

    def readable_file(self, key: str) -> str | None:
        """A path that exists and can be opened now (a missing mount is a start-up error)."""
        path = self.path(key)
        if path is None:
            return None
        try:
            read_head(path, 0)
        except ValueError as exc:
            self.problem(key, f"file {path!r} {exc}")
            return None
        return path

    def revisions(self, key: str) -> tuple[str, ...]:
        value = self.raw.get(key, ABSENT)
        if value is ABSENT:
            return ()
        if isinstance(value, str):
            items: list[object] = [value]
        elif isinstance(value, list) and value:
            items = list(value)
        else:
            what = "an empty list" if isinstance(value, list) else shown(value)
            self.problem(key, f"{REVISION_RULE}, got {what}")
            return ()
        found: list[str] = []
        for index, item in enumerate(items):
            label = key if isinstance(value, str) else f"{key}[{index}]"
            if not isinstance(item, str) or not item or any(ch.isspace() for ch in item):
                self.problem(label, f"{REVISION_RULE}, got {shown(item)}")
                continue
            found.append(item)
        return tuple(dict.fromkeys(found)) if len(found) == len(items) else ()

    def url(self, key: str) -> str | None:
        value = self.raw.get(key, ABSENT)
        if value is ABSENT:
            self.problem(key, "missing; an http check needs one")
            return None
        # The URL itself is never quoted: it may carry a token or a password.
        if not isinstance(value, str):
            self.problem(key, f"must be an http:// or https:// URL, got {kind_of(value)}")
            return None
        problem = _url_problem(value)
        if problem is not None:
            self.problem(key, problem)
            return None
        return value

    def status_range(self, key: str) -> tuple[int, int] | None:
        value = self.raw.get(key, ABSENT)
        if value is ABSENT:
            return DEFAULT_STATUS
        if isinstance(value, int) and not isinstance(value, bool):
            low = high = value
        elif isinstance(value, str) and (match := _STATUS_TEXT.fullmatch(value)):
            low = int(match.group(1))
            high = int(match.group(2) or match.group(1))
        else:
            low = high = 0  # refused just below
        lowest, highest = STATUS_RANGE
        if not (lowest <= low <= highest and lowest <= high <= highest):
            self.problem(key, f"{STATUS_RULE}, got {shown(value)}")
            return None
        if low > high:
            self.problem(key, f"the range starts at {low}, above its end {high}")
            return None
        return (low, high)

    def host(self, key: str) -> str | None:
        value = self.raw.get(key, ABSENT)
        if value is ABSENT:
            self.problem(key, "missing; a tcp check needs one")
            return None
        if not isinstance(value, str) or not value or not valid_host(value):
            self.problem(key, f"must be a host name or address, got {shown(value)}")
            return None
        return value

    def port(self, key: str) -> int | None:
        value = self.raw.get(key, ABSENT)
        if value is ABSENT:
            self.problem(key, "missing; a tcp check needs one")
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not PORT.in_range(value):
            self.problem(key, f"{PORT_RULE}, got {shown(value)}")
            return None
        return value


def _url_problem(value: str) -> str | None:
    """Why `value` is not a usable http(s) URL, without quoting any of it."""
    rule = "must be an http:// or https:// URL"
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in value):
        return f"{rule} without whitespace or control characters"
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError on a port that is not a number
        hostname = parts.hostname
    except ValueError:
        return f"{rule}; this one is malformed (bad port or brackets)"
    if parts.scheme.lower() not in ("http", "https"):
        return f"{rule}; this one has another scheme or none"
    if "@" in parts.netloc:
        return (
            "must not hold user:password@: the check file is not a Secret "
            "(serve the probe path without authentication)"
        )
    if not hostname or not valid_host(hostname):
        return f"{rule} with a host name or address"
    return None


# ---- showing values -----------------------------------------------------------------------------


def _a(kind: str) -> str:
    return f"an {kind}" if kind == "http" else f"a {kind}"


_KINDS_OF: Final[tuple[tuple[type | tuple[type, ...], str], ...]] = (
    (bool, "a boolean"),  # before int: bool is an int in Python
    ((int, float), "a number"),
    (str, "text"),
    (list, "a list"),
    (Mapping, "a mapping"),
)


def kind_of(value: object) -> str:
    """What a value is, without showing it."""
    if value is None:
        return "null"
    for types, label in _KINDS_OF:
        if isinstance(value, types):
            return label
    return f"a {type(value).__name__}"


def shown(value: object) -> str:
    """A short, one-line rendering of a refused value (only ever called on values that are
    not secrets: names, kinds, numbers, hosts, paths)."""
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, int):
        # Python refuses to print an int beyond 4300 digits; nobody needs to read one.
        return repr(value) if value.bit_length() <= 64 else "a very large number"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return f"text {clip(value)}" if value else "empty text"
    return kind_of(value)


def shown_key(key: object) -> str:
    return clip(key) if isinstance(key, str) else shown(key)


def clip(text: str) -> str:
    """repr() of at most 40 characters: one line, every control character escaped."""
    if len(text) <= _SHOWN_CHARS:
        return repr(text)
    return repr(text[:_SHOWN_CHARS]) + "..."


def one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 200 else line[:200] + "..."


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no file system path can hold it
        return False
    return True
