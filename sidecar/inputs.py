"""Leaf helpers that judge raw input: a small file's text, a DSN, a host name.

Imports nothing of ours, so that settings, the check file and the DSN watcher can all use it.
A reason is always worded so that it never quotes a DSN (it may hold a password).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Mapping
from typing import Final
from urllib.parse import parse_qs, unquote, unquote_plus, urlsplit

DSN_SCHEMES: Final = ("postgresql", "postgres")
# SQLAlchemy's `dialect+driver://` URLs (postgresql+asyncpg://, postgres+psycopg2://) name the
# same database as the plain scheme: the app's own Secret serves the sidecar as it is.
_WITH_DRIVER: Final = re.compile(r"^(postgresql|postgres)\+([a-z0-9_]{1,32})$", re.IGNORECASE)
# asyncpg's own ssl=true/false, as libpq modes (asyncpg's True verifies the certificate and name).
_ASYNCPG_SSL: Final = {"ssl=true": "sslmode=verify-full", "ssl=false": "sslmode=disable"}
# The query parameters SQLAlchemy's asyncpg dialect keeps (prepared_statement_cache_size=0 is the
# usual one behind pgbouncer) or hands to asyncpg.connect as keyword arguments; asyncpg's DSN
# parser would send each to the server as a setting, which refuses the session (42704).
_ASYNCPG_ARGUMENTS: Final = frozenset(
    (
        "prepared_statement_cache_size",
        "async_fallback",
        "command_timeout",
        "timeout",
        "statement_cache_size",
        "max_cached_statement_lifetime",
        "max_cacheable_statement_size",
    )
)
# What RFC 3986 allows in a scheme: a word like that is safe to quote in a refusal.
_SCHEME: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]{0,31}$")
# libpq's sslmode values, weakest first (asyncpg takes the same ones).
SSL_MODES: Final = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# DSN parameters naming a file the TLS handshake reads; checked at start, as a missing one
# would otherwise show only as a failed check.
TLS_FILE_PARAMETERS: Final = ("sslrootcert", "sslcert", "sslkey", "sslcrl")
# The environment's equivalents, which libpq and asyncpg read when the DSN says nothing.
TLS_ENVIRONMENT: Final = {
    "PGSSLROOTCERT": "sslrootcert",
    "PGSSLCERT": "sslcert",
    "PGSSLKEY": "sslkey",
    "PGSSLCRL": "sslcrl",
}
# libpq's target_session_attrs values (asyncpg takes the same ones; libpq compares them exactly).
SESSION_ATTRS: Final = ("any", "primary", "standby", "prefer-standby", "read-write", "read-only")
# asyncpg's other parameters with a fixed set of values, and the variables it reads them from
# when the DSN does not say: a value outside the set fails every connect (as tls_error).
_TLS_VERSIONS: Final = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
CHOICE_PARAMETERS: Final = {
    "ssl_min_protocol_version": ("PGSSLMINPROTOCOLVERSION", _TLS_VERSIONS),
    "ssl_max_protocol_version": ("PGSSLMAXPROTOCOLVERSION", _TLS_VERSIONS),
    "sslnegotiation": ("PGSSLNEGOTIATION", ("postgres", "direct")),
    "gsslib": ("PGGSSLIB", ("gssapi", "sspi")),
}
# libpq's client-side timing parameters, common in an app's own URL (psycopg's connect_timeout).
# asyncpg does not know them and would send each to the server as a setting, which refuses the
# session (42704); the check's own timeout and a new connection after a failure do their job.
IGNORED_PARAMETERS: Final = frozenset(
    (
        "connect_timeout",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
        "fallback_application_name",
    )
)
# libpq's other parameters that asyncpg does not know: each would go to the server as a setting
# too, and dropping it would quietly accept a connection the DSN's author meant to refuse.
UNSUPPORTED_PARAMETERS: Final = (
    "hostaddr",
    "channel_binding",
    "require_auth",
    "requirepeer",
    "requiressl",
    "gssencmode",
    "gssdelegation",
    "sslcompression",
    "sslsni",
    "sslcrldir",
    "sslcertmode",
    "replication",
    "load_balance_hosts",
)
# A DSN file is a mounted Secret holding one line; anything bigger is a wrong mount.
MAX_DSN_FILE_BYTES: Final = 64 * 1024


def unprintable(text: str, *, spaces: bool = True) -> bool:
    """True for a control character (C0 or DEL) in `text`, or whitespace unless `spaces` is
    False: never part of a host, a URL or a DSN (a path may hold spaces)."""
    return any(ord(ch) < 32 or ord(ch) == 127 or (spaces and ch.isspace()) for ch in text)


def valid_host(host: str) -> bool:
    """False for whitespace, a control character, a slash, or a name the resolver cannot even
    encode (an empty or 64+ character label): binding or connecting to it would fail later, or
    raise UnicodeError, a traceback instead of exit 2 (tests/test_config_properties.py). Also
    for brackets: `[::1]` is a URL's spelling of an address, which no resolver takes."""
    if unprintable(host) or "/" in host or "[" in host or "]" in host:
        return False
    try:
        host.encode("idna")
    except UnicodeError:
        return False
    return True


def split_driver(dsn: str) -> tuple[str, str | None]:
    """The DSN with a `+driver` suffix of its scheme dropped, and that driver (None if none).

    SQLAlchemy's asyncpg dialect hands `?ssl=` to asyncpg.connect, where libpq (and asyncpg's
    own DSN parser, which would send it to the server as a setting) says `?sslmode=`: renamed,
    unless the URL says `sslmode` too. The dialect's own parameters and asyncpg.connect's keyword
    arguments (_ASYNCPG_ARGUMENTS) are dropped: the check sets its own."""
    scheme, sep, rest = dsn.partition("://")
    match = _WITH_DRIVER.match(scheme) if sep else None
    if match is None:
        return dsn, None
    driver = match.group(2)
    head, mark, query = rest.partition("?")
    pairs = query.split("&") if mark else []
    if driver.lower() == "asyncpg":
        if not any(p.startswith("sslmode=") for p in pairs):
            pairs = [
                _ASYNCPG_SSL.get(p, p.replace("ssl=", "sslmode=", 1)) if p.startswith("ssl=") else p
                for p in pairs
            ]
        pairs = [p for p in pairs if unquote_plus(p.partition("=")[0]) not in _ASYNCPG_ARGUMENTS]
        rest = f"{head}{'?' if pairs else ''}{'&'.join(pairs)}"
    return f"{match.group(1)}://{rest}", driver


def without_ignored_parameters(dsn: str) -> str:
    """The DSN without libpq's client-side timing parameters (IGNORED_PARAMETERS)."""
    head, mark, query = dsn.partition("?")
    if not mark:
        return dsn
    pairs = [
        p for p in query.split("&") if unquote_plus(p.partition("=")[0]) not in IGNORED_PARAMETERS
    ]
    return f"{head}?{'&'.join(pairs)}" if pairs else head


_MALFORMED_URL: Final = (
    "malformed URL (bad port or brackets; a '/', '?' or '#' in the password must be "
    "percent-encoded)"
)


def dsn_problem(dsn: str) -> str | None:
    """Why this DSN is refused, without ever quoting it (it may hold a password)."""
    dsn, _driver = split_driver(dsn)
    scheme, sep, _rest = dsn.partition("://")
    if not sep:
        return "not a URL: expected postgresql://user:password@host:port/database"
    if scheme.lower() not in DSN_SCHEMES:
        # A scheme-shaped word is no secret; anything else may be a password typed first.
        shown = f"{scheme!r} " if _SCHEME.match(scheme) else ""
        return f"scheme {shown}is not supported; use postgresql:// or postgres://"
    if unprintable(dsn):
        return "contains whitespace or control characters"
    try:
        parts = urlsplit(dsn)
        # libpq (and asyncpg) take a list of hosts, `h1:5432,h2:5432`, for failover: each
        # must be a host with an optional numeric port.
        hosts = parts.netloc.rpartition("@")[2]
        # ValueError on a port that is not a number, or over 65535; 0 is no port either.
        ports_ok = 0 not in [urlsplit(f"//{spec}").port for spec in hosts.split(",")]
    except ValueError:
        ports_ok = False
    if not ports_ok:
        return _MALFORMED_URL
    # libpq and asyncpg end the user and password at the first '@' (Python's parser at the
    # last), and the host list at the first '/': with a raw '@' or '/' in the password each
    # reads a different host, database and password. Refused rather than guessed.
    if parts.netloc.count("@") > 1 or "@" in parts.path:
        return "an '@' or '/' in the user name or password must be percent-encoded (%40, %2F)"
    return _parameters_problem(parts.query, authority_hosts=bool(hosts))


def _parameters_problem(query: str, *, authority_hosts: bool = False) -> str | None:
    """Why the DSN's query parameters are refused: a malformed query, a bad sslmode or port, a
    TLS file that cannot be read, a host or port said twice. The value of a parameter is quoted
    only when it is no secret."""
    if not query:
        return None
    try:
        # Parsed as asyncpg parses it (strictly, the last value of a key wins).
        values = {k: v[-1] for k, v in parse_qs(query, strict_parsing=True).items()}
    except ValueError:
        return "malformed query string (expected key=value pairs joined by &)"
    judges: dict[str, Callable[[str], str | None]] = {
        "sslmode": sslmode_problem,
        "target_session_attrs": session_attrs_problem,
    }
    judges.update(dict.fromkeys(TLS_FILE_PARAMETERS, tls_file_problem))
    for key, (_variable, choices) in CHOICE_PARAMETERS.items():
        if key in values and values[key] not in choices:
            return f"{key}: {choice_problem(values[key], choices)}"
    for key in UNSUPPORTED_PARAMETERS:
        if key in values:
            return (
                f"{key}: a libpq parameter this sidecar's client (asyncpg) cannot honour; remove it"
            )
    for key, judge in judges.items():
        problem = judge(values[key]) if key in values else None
        if problem:
            return f"{key}: {problem}"
    return _host_and_port_problem(values, authority_hosts=authority_hosts)


def _host_and_port_problem(values: Mapping[str, str], *, authority_hosts: bool) -> str | None:
    """Why the query's `host=` or `port=` is refused, or None."""
    for key in ("host", "port"):
        # libpq takes the query's `host=`/`port=` over the URL's `@host:port`; asyncpg ignores
        # them then: the check would quietly reach another server than the app's libpq does.
        if key in values and authority_hosts:
            return (
                f"{key}: ?{key}= beside a host after the '@' is used by libpq but ignored by "
                "this sidecar's client (asyncpg); write host:port after the '@' only, or no "
                "host there (postgresql://user@/db?host=...&port=...)"
            )
    if "port" in values and not all(_is_port(p) for p in values["port"].split(",")):
        # asyncpg would raise on every check (a crash each time), or dial a port that is none.
        return "port: must be a port between 1 and 65535, or one per host joined by ','"
    return None


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and 1 <= int(text) <= 65535


def _close_matches(word: str, choices: tuple[str, ...]) -> list[str]:
    # Imported here: only a bad value pays for difflib (~0.2 MiB RSS), never a start.
    import difflib  # noqa: PLC0415

    return difflib.get_close_matches(word, choices, n=1)


def sslmode_problem(value: str) -> str | None:
    """Why `value` is no sslmode (with a did-you-mean when one is close), or None."""
    if value in SSL_MODES:
        return None
    shown = f"{value!r} " if re.fullmatch(r"[A-Za-z_-]{1,20}", value) else ""
    guess = _close_matches(value.lower(), SSL_MODES)
    hint = f"; did you mean {guess[0]!r}?" if guess and shown else ""
    return f"{shown}is not one of {', '.join(SSL_MODES)}{hint}"


def choice_problem(value: str, choices: tuple[str, ...]) -> str:
    """Why `value` is none of `choices`, quoting it only when it looks like a word."""
    shown = f"{value!r} " if re.fullmatch(r"[A-Za-z0-9_.-]{1,20}", value) else ""
    return f"{shown}is not one of {', '.join(choices)}"


def session_attrs_problem(value: str) -> str | None:
    """Why `value` is no target_session_attrs (with a did-you-mean when one is close), or None."""
    if value in SESSION_ATTRS:
        return None
    shown = f"{value!r} " if re.fullmatch(r"[A-Za-z_-]{1,20}", value) else ""
    guess = _close_matches(value.lower().replace("_", "-"), SESSION_ATTRS)
    hint = f"; did you mean {guess[0]!r}?" if guess and shown else ""
    return f"{shown}is not one of {', '.join(SESSION_ATTRS)}{hint}"


def tls_file_problem(path: str) -> str | None:
    """Why the TLS file at `path` cannot be used, or None; the path is quoted (never a secret)."""
    try:
        read_head(path, 1)
    except ValueError as exc:
        return f"file {path!r} {exc}"
    return None


def libpq_tls_problems(environ: Mapping[str, str]) -> list[str]:
    """PGSSLMODE and the PGSSL* file variables, which every postgres check inherits."""
    problems = []
    mode = environ.get("PGSSLMODE")
    if mode:
        problem = sslmode_problem(mode)
        if problem:
            problems.append(f"PGSSLMODE: {problem}")
    for variable, choices in CHOICE_PARAMETERS.values():
        value = environ.get(variable)
        if value and value not in choices:
            problems.append(f"{variable}: {choice_problem(value, choices)}")
    # Not TLS, but read by every postgres check alike, and as fatal when mistyped.
    attrs = environ.get("PGTARGETSESSIONATTRS")
    if attrs:
        problem = session_attrs_problem(attrs)
        if problem:
            problems.append(f"PGTARGETSESSIONATTRS: {problem}")
    for variable in TLS_ENVIRONMENT:
        path = environ.get(variable)
        if path:
            problem = tls_file_problem(path)
            if problem:
                problems.append(f"{variable}: {problem}")
    return problems


def read_head(path: str, size: int) -> bytes:
    """At most `size` bytes of a regular file; ValueError says why there are none, as the rest
    of a sentence that begins with the file's name ("does not exist", "is a directory, ...").

    Opened without blocking, and a named pipe is refused: a plain open() of one waits for a
    writer forever, which hung the start with no line, or, for a DSN file swapped for one while
    running, the event loop and every probe with it (tests/test_surroundings.py). A device is
    read (`/dev/null` is an empty file, as libpq reads it).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            kind = stat.S_IFMT(os.fstat(fd).st_mode)
            data = None if kind in _NOT_FILES else handle.read(size)
    except FileNotFoundError:
        raise ValueError("does not exist") from None
    except IsADirectoryError:
        raise ValueError("is a directory, not a file") from None
    except PermissionError:
        raise ValueError(f"is not readable (permission denied{_access_hint(path)})") from None
    except OSError as exc:
        raise ValueError(f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    except ValueError:  # a NUL in the path: open() refuses it before asking the system
        raise ValueError("is not a valid path") from None
    if data is None:
        raise ValueError(f"is {_NOT_FILES[kind]}, not a file")
    return data


# What read_head refuses to read, by the name it gives them.
_NOT_FILES: Final = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a named pipe (FIFO)",
}


def _access_hint(path: str) -> str:
    """Why this process may not read `path`, and the fix in a pod: "" when even a stat fails.

    The usual cause is a Secret or ConfigMap volume projected without an fsGroup: kubelet then
    writes files owned by root:root with exactly the volume's defaultMode, so 0440 or 0400 shuts
    out every uid and gid but 0 (README "Add it to your own workload").
    """
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return ""
    return (
        f": mode {stat.S_IMODE(info.st_mode):04o}, owner {info.st_uid}:{info.st_gid},"
        f" this process {os.geteuid()}:{os.getegid()}; a mounted Secret or ConfigMap needs"
        " defaultMode 0444, or an fsGroup on the pod"
    )


def read_text_file(path: str, limit: int) -> str:
    """A small UTF-8 text file's content, without a leading byte order mark (an editor's: it is
    invisible in the file, and made a DSN an unsupported scheme, a check file a syntax error);
    ValueError says why there is none (see read_head)."""
    data = read_head(path, limit + 1)
    if len(data) > limit:
        raise ValueError(f"is larger than {limit} bytes")
    try:
        # What the utf-8-sig codec does, without loading a codec module for it.
        return data.decode("utf-8").removeprefix("\ufeff")
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


def dsn_names_user(dsn: str | None) -> bool:
    """True when the DSN says which user to log in as (user@host, or ?user=)."""
    if not dsn:
        return False
    try:
        parts = urlsplit(split_driver(dsn)[0])
    except ValueError:
        return True  # refused elsewhere; nothing to add here
    return bool(parts.username) or bool(parse_qs(parts.query).get("user"))


def dsn_passwords(dsn: str) -> list[str]:
    """The password of a DSN, as written and decoded (either form could be echoed)."""
    try:
        parts = urlsplit(split_driver(dsn)[0])
    except ValueError:
        return []
    found: list[str] = []
    if parts.password:
        found.append(parts.password)
        found.append(unquote(parts.password))
    # libpq also accepts the password as a query parameter, and the client key's passphrase
    # (sslpassword); asyncpg decodes keys and values (`%70assword` is `password`, `+` a space).
    for pair in parts.query.split("&"):
        key, _, value = pair.partition("=")
        if unquote_plus(key) in ("password", "sslpassword") and value:
            found.extend((value, unquote(value), unquote_plus(value)))
    return list(dict.fromkeys(p for p in found if p))
