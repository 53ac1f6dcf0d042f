"""Leaf helpers that judge raw input: a small file's text, a DSN, a host name.

Imports nothing of ours, so that settings, the check file and the DSN watcher can all use it.
A reason is always worded so that it never quotes a DSN (it may hold a password).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final
from urllib.parse import unquote, urlsplit

DSN_SCHEMES: Final = ("postgresql", "postgres")
# A DSN file is a mounted Secret holding one line; anything bigger is a wrong mount.
MAX_DSN_FILE_BYTES: Final = 64 * 1024


def unprintable(text: str, *, spaces: bool = True) -> bool:
    """True for a control character (C0 or DEL) in `text`, or whitespace unless `spaces` is
    False: never part of a host, a URL or a DSN (a path may hold spaces)."""
    return any(ord(ch) < 32 or ord(ch) == 127 or (spaces and ch.isspace()) for ch in text)


def valid_host(host: str) -> bool:
    """False for whitespace, a control character, a slash, or a name the resolver cannot even
    encode (an empty or 64+ character label): binding or connecting to it would fail later, or
    raise UnicodeError, a traceback instead of exit 2 (tests/test_config_properties.py)."""
    if unprintable(host) or "/" in host:
        return False
    try:
        host.encode("idna")
    except UnicodeError:
        return False
    return True


def dsn_problem(dsn: str) -> str | None:
    """Why this DSN is refused, without ever quoting it (it may hold a password)."""
    scheme, sep, _rest = dsn.partition("://")
    if not sep:
        return "not a URL: expected postgresql://user:password@host:port/database"
    if scheme.lower() not in DSN_SCHEMES:
        shown = scheme if scheme.isascii() and scheme.isalnum() and len(scheme) <= 20 else "?"
        return f"scheme {shown!r} is not supported; use postgresql:// or postgres://"
    if unprintable(dsn):
        return "contains whitespace or control characters"
    try:
        parts = urlsplit(dsn)
        # libpq (and asyncpg) take a list of hosts, `h1:5432,h2:5432`, for failover: each
        # must be a host with an optional numeric port.
        hosts = parts.netloc.rpartition("@")[2]
        for spec in hosts.split(","):
            _ = urlsplit(f"//{spec}").port  # ValueError on a port that is not a number
    except ValueError:
        return "malformed URL (bad port or brackets)"
    return None


def read_head(path: str, size: int) -> bytes:
    """At most `size` bytes of a file; ValueError says why there are none, as the rest of a
    sentence that begins with the file's name ("does not exist", "is a directory, ...")."""
    try:
        with Path(path).open("rb") as handle:
            return handle.read(size)
    except FileNotFoundError:
        raise ValueError("does not exist") from None
    except IsADirectoryError:
        raise ValueError("is a directory, not a file") from None
    except PermissionError:
        raise ValueError("is not readable (permission denied)") from None
    except OSError as exc:
        raise ValueError(f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    except ValueError:  # a NUL in the path: open() refuses it before asking the system
        raise ValueError("is not a valid path") from None


def read_text_file(path: str, limit: int, *, encoding: str = "utf-8") -> str:
    """A small text file's content; ValueError says why there is none (see read_head)."""
    data = read_head(path, limit + 1)
    if len(data) > limit:
        raise ValueError(f"is larger than {limit} bytes")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        raise ValueError("is not UTF-8 text") from None


def read_dsn_file(path: str) -> str:
    """Read a DSN from a mounted Secret file; ValueError says why it is unusable."""
    try:
        dsn = read_text_file(path, MAX_DSN_FILE_BYTES).strip()
    except ValueError as exc:
        raise ValueError(f"file {path!r} {exc}") from None
    if not dsn:
        raise ValueError(f"file {path!r} is empty")
    problem = dsn_problem(dsn)
    if problem:
        raise ValueError(f"file {path!r}: {problem}")
    return dsn


def dsn_passwords(dsn: str) -> list[str]:
    """The password of a DSN, as written and percent-decoded (either form could be echoed)."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return []
    found: list[str] = []
    if parts.password:
        found.append(parts.password)
    # libpq also accepts the password as a query parameter.
    for pair in parts.query.split("&"):
        key, _, value = pair.partition("=")
        if key == "password" and value:
            found.append(value)
    return found + [unquote(p) for p in found if unquote(p) != p]
