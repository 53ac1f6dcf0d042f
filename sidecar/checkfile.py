"""The check file (SIDECAR_CONFIG_FILE): YAML or TOML in, check specs out (issue 7).

Nothing here raises for a bad file: every problem is one line appended to `problems`, naming
the check (its index, and its name when known) and the key, so that all of them are reported at
once, as the SIDECAR_* variables are. A line never quotes a DSN, a URL or a password: a refused
value may be one, and the lines end up on stderr and in the pod's events.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from sidecar.checkspec import (
    CRITICALITIES,
    KINDS,
    NAME_PATTERN,
    AnySpec,
    DatabaseTarget,
    HttpSpec,
    PostgresSpec,
    ProbePolicy,
    TcpSpec,
)
from sidecar.config import dsn_problem, read_dsn_file, valid_host

if TYPE_CHECKING:
    import yaml

ORIGIN: Final = "SIDECAR_CONFIG_FILE"
# A check list is a few kilobytes; anything near this is a wrong mount, not a config.
MAX_CHECK_FILE_BYTES: Final = 1024 * 1024
YAML_SUFFIXES: Final = (".yaml", ".yml")
TOML_SUFFIXES: Final = (".toml",)

# key -> (ProbePolicy field, minimum, maximum, minimum allowed?, whole number?): the same
# ranges as SIDECAR_CHECK_INTERVAL, _TIMEOUT, _BACKOFF_MAX, _FAILURE_/_SUCCESS_THRESHOLD.
TIMING: Final[dict[str, tuple[str, float, float, bool, bool]]] = {
    "interval_seconds": ("interval", 0, 3600, False, False),
    "timeout_seconds": ("timeout", 0, 600, False, False),
    "backoff_max_seconds": ("backoff_max", 0, 3600, False, False),
    "failure_threshold": ("failure_threshold", 1, 1000, True, True),
    "success_threshold": ("success_threshold", 1, 1000, True, True),
}
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
# A day: a replica further behind than that is broken, not lagging.
MAX_REPLICA_LAG_SECONDS: Final = 86400
STATUS_RANGE: Final = (100, 599)
DEFAULT_STATUS: Final = (200, 399)  # kubelet's own httpGet rule
NAME_RULE: Final = (
    "must be 1 to 63 lowercase letters, digits, '-' or '_', "
    "starting and ending with a letter or digit"
)
STATUS_RULE: Final = 'must be a status code (100-599) or a range "A-B" such as "200-399"'
REVISION_RULE: Final = (
    "must be a revision id as text, or a list of them (quote one that looks like a number)"
)
_STATUS_TEXT: Final = re.compile(r"\s*([0-9]{3})\s*(?:-\s*([0-9]{3})\s*)?")
_SHOWN_CHARS: Final = 40


class _Unreadable:
    """The document could not be read or parsed (a problem has been appended)."""


_UNREADABLE: Final = _Unreadable()
_ABSENT: Final = object()


def load_check_file(
    path: str, *, defaults: ProbePolicy, database: DatabaseTarget, problems: list[str]
) -> tuple[AnySpec, ...]:
    """The checks of the file at `path`; problems appended, never raised."""
    document = _read_document(path, problems)
    if isinstance(document, _Unreadable):
        return ()
    return parse_checks(document, defaults=defaults, database=database, problems=problems)


def parse_checks(
    document: object,
    *,
    defaults: ProbePolicy,
    database: DatabaseTarget,
    problems: list[str],
    origin: str = ORIGIN,
) -> tuple[AnySpec, ...]:
    """Check specs from a parsed document (mappings, lists, scalars); problems appended.

    `defaults` is the schedule from the SIDECAR_* variables; the document's `defaults` override
    it and each check's own keys override both. `database` is the environment's target: a
    postgres check that names neither `dsn` nor `dsn_file` uses it. Only the files the document
    names (dsn_file, ca_file, cert_file, key_file) are read.
    """
    if document is None:
        problems.append(f"{origin}: the file is empty; it must hold a 'checks' list")
        return ()
    if not isinstance(document, Mapping):
        problems.append(f"{origin}: must be a mapping with a 'checks' list, got {_shown(document)}")
        return ()
    for key in document:
        if key not in ("defaults", "checks"):
            problems.append(f"{origin}: unknown key {_key(key)}; allowed: checks, defaults")

    policy = _defaults(document.get("defaults", _ABSENT), defaults, problems, origin)
    raw_checks = document.get("checks", _ABSENT)
    if raw_checks is _ABSENT:
        problems.append(f"{origin}: checks: missing; list at least one check")
        return ()
    if not isinstance(raw_checks, list):
        problems.append(f"{origin}: checks: must be a list of checks, got {_shown(raw_checks)}")
        return ()
    if not raw_checks:
        problems.append(f"{origin}: checks: must list at least one check, got an empty list")
        return ()

    specs: list[AnySpec] = []
    first_index: dict[str, int] = {}
    for index, raw in enumerate(raw_checks):
        spec = _parse_check(raw, f"{origin}: checks[{index}]", policy, database, problems)
        name = _valid_name(raw)
        if name is not None and name in first_index:
            problems.append(
                f"{origin}: checks[{index}] ({name}): name: "
                f"already used by checks[{first_index[name]}]"
            )
            continue
        if name is not None:
            first_index[name] = index
        if spec is not None:
            specs.append(spec)
    return tuple(specs)


def _defaults(raw: object, base: ProbePolicy, problems: list[str], origin: str) -> ProbePolicy:
    """The schedule every check starts from: `base` with the file's `defaults` applied."""
    if raw is _ABSENT:
        return base
    if not isinstance(raw, Mapping):
        problems.append(f"{origin}: defaults: must be a mapping, got {_shown(raw)}")
        return base
    for key in raw:
        if key not in TIMING:
            allowed = ", ".join(sorted(TIMING))
            problems.append(f"{origin}: defaults: unknown key {_key(key)}; allowed: {allowed}")
    return _Fields(f"{origin}: defaults", raw, problems).policy(base)


# ---- reading the file ---------------------------------------------------------------------------


def _read_document(path: str, problems: list[str]) -> object:
    suffix = Path(path).suffix.lower()
    if suffix not in (*YAML_SUFFIXES, *TOML_SUFFIXES):
        shown = repr(suffix) if suffix else "no extension"
        problems.append(
            f"{ORIGIN}: file {path!r} has {shown}; name it .yaml, .yml (YAML) or .toml (TOML)"
        )
        return _UNREADABLE
    try:
        text = _read_text(path)
    except ValueError as exc:
        problems.append(f"{ORIGIN}: file {path!r} {exc}")
        return _UNREADABLE
    if suffix in TOML_SUFFIXES:
        return _parse_toml(path, text, problems)
    return _parse_yaml(path, text, problems)


def _read_text(path: str) -> str:
    """The file's text; ValueError says why there is none (as read_dsn_file does)."""
    try:
        with Path(path).open("rb") as handle:
            data = handle.read(MAX_CHECK_FILE_BYTES + 1)
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
    if len(data) > MAX_CHECK_FILE_BYTES:
        raise ValueError(f"is larger than {MAX_CHECK_FILE_BYTES} bytes")
    try:
        # utf-8-sig: an editor's byte order mark is not a syntax error.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError("is not UTF-8 text") from None


def _parse_toml(path: str, text: str, problems: list[str]) -> object:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # Its message already ends with "(at line L, column C)" and never quotes a value.
        problems.append(f"{ORIGIN}: file {path!r} is not valid TOML: {_one_line(str(exc))}")
    except RecursionError:
        problems.append(f"{ORIGIN}: file {path!r} is not usable TOML: nested too deeply")
    except ValueError as exc:  # e.g. an integer beyond Python's digit limit
        problems.append(f"{ORIGIN}: file {path!r} is not usable TOML: {_value_error(exc)}")
    return _UNREADABLE


def _parse_yaml(path: str, text: str, problems: list[str]) -> object:
    try:
        import yaml  # noqa: PLC0415 -- only a YAML check file needs it
    except ImportError:
        problems.append(
            f"{ORIGIN}: file {path!r} is YAML, but PyYAML is not installed; use a .toml file"
        )
        return _UNREADABLE
    try:
        # The loader checks for unprintable characters as it is built: inside the `try`.
        loader = _unique_key_loader()(text)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        # Only the position and the parser's short reason: its full dump quotes the lines
        # around the error, which may hold a DSN.
        where = ""
        if exc.problem_mark is not None:
            where = f"line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1}: "
        reason = _one_line(exc.problem or exc.context or "syntax error")
        problems.append(f"{ORIGIN}: file {path!r} is not valid YAML: {where}{reason}")
    except yaml.reader.ReaderError as exc:  # a control character, found by offset
        where = _position(text, exc.position)
        problems.append(
            f"{ORIGIN}: file {path!r} is not valid YAML: {where}: control character "
            f"{_clip(chr(exc.character)) if isinstance(exc.character, int) else ''}"
        )
    except yaml.YAMLError as exc:
        problems.append(f"{ORIGIN}: file {path!r} is not valid YAML: {_one_line(str(exc))}")
    except RecursionError:
        problems.append(f"{ORIGIN}: file {path!r} is not usable YAML: nested too deeply")
    except (ValueError, TypeError, OverflowError) as exc:  # 2024-13-45, a 5000-digit integer
        problems.append(f"{ORIGIN}: file {path!r} is not usable YAML: {_value_error(exc)}")
    return _UNREADABLE


def _position(text: str, offset: int) -> str:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return f"line {line}, column {column}"


def _value_error(exc: Exception) -> str:
    if "integer string conversion" in str(exc):
        # Python's own message suggests sys.set_int_max_str_digits(), no help to a reader.
        return "an integer has too many digits"
    return _one_line(str(exc))


@functools.cache
def _unique_key_loader() -> type[yaml.SafeLoader]:
    """yaml.SafeLoader, but a key repeated in one mapping is an error: PyYAML silently keeps
    the last one, so `name: a` ... `name: b` would drop a setting without a word."""
    import yaml  # noqa: PLC0415 -- see _parse_yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
            seen: set[tuple[str, str]] = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    key = (key_node.tag, str(key_node.value))
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {_clip(key[1])}", key_node.start_mark
                        )
                    seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


# ---- one check ----------------------------------------------------------------------------------


def _parse_check(
    raw: object,
    where: str,
    policy: ProbePolicy,
    database: DatabaseTarget,
    problems: list[str],
) -> AnySpec | None:
    """One check's spec, or None when it has a problem (appended)."""
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: must be a mapping, got {_shown(raw)}")
        return None
    before = len(problems)
    name = _valid_name(raw)
    if name is not None:
        where = f"{where} ({name})"
    fields = _Fields(where, raw, problems)
    if "name" not in raw:
        problems.append(f"{where}: name: missing; every check needs one")
    elif name is None:
        problems.append(f"{where}: name: {NAME_RULE}, got {_shown(raw['name'])}")
    kind = raw.get("kind", _ABSENT)
    if kind is _ABSENT:
        problems.append(f"{where}: kind: missing; must be one of {', '.join(KINDS)}")
    elif kind not in KINDS:
        problems.append(f"{where}: kind: must be one of {', '.join(KINDS)}, got {_shown(kind)}")
    known_kind = kind if isinstance(kind, str) and kind in KINDS else None
    fields.refuse_unknown_keys(known_kind)

    common = _Common(
        name=name or "",
        policy=fields.policy(policy),
        critical=fields.choice("criticality", CRITICALITIES, "critical") == "critical",
    )
    spec: AnySpec | None = None
    if known_kind == "postgres":
        spec = _postgres(fields, common, database)
    elif known_kind == "http":
        spec = _http(fields, common)
    elif known_kind == "tcp":
        spec = _tcp(fields, common)
    # A spec is only built from a check without a single problem.
    return spec if name is not None and len(problems) == before else None


@dataclass(frozen=True, slots=True)
class _Common:
    """What every kind's spec takes."""

    name: str
    policy: ProbePolicy
    critical: bool


def _postgres(fields: _Fields, common: _Common, database: DatabaseTarget) -> PostgresSpec | None:
    raw = fields.raw
    target = _postgres_target(fields, database)
    require_primary = fields.boolean("require_primary")
    allow_replica = fields.boolean("allow_replica")
    lag = fields.number(
        "max_replica_lag_seconds", minimum=0, maximum=MAX_REPLICA_LAG_SECONDS, inclusive=False
    )
    if require_primary and allow_replica:
        fields.problem("allow_replica", "contradicts require_primary: true; set only one of them")
    lag_alone = "max_replica_lag_seconds" in raw and not allow_replica
    if lag_alone and fields.valid("allow_replica") and fields.valid("max_replica_lag_seconds"):
        fields.problem("max_replica_lag_seconds", "only valid with allow_replica: true")

    query = fields.query("query")
    expect = fields.expected_text("expect")
    if "expect" in raw and "query" not in raw:
        fields.problem("expect", "only valid with query")

    ca_file = fields.readable_file("ca_file")
    cert_file = fields.readable_file("cert_file")
    key_file = fields.readable_file("key_file")
    if "cert_file" in raw and "key_file" not in raw:
        fields.problem("cert_file", "needs key_file too (the client certificate's private key)")
    if "key_file" in raw and "cert_file" not in raw:
        fields.problem("key_file", "needs cert_file too (the client certificate)")
    revisions = fields.revisions("alembic_revision")
    if target is None:
        return None
    return PostgresSpec(
        name=common.name,
        policy=common.policy,
        critical=common.critical,
        target=target,
        query=query,
        expect=expect,
        require_primary=require_primary,
        allow_replica=allow_replica,
        max_replica_lag_seconds=None if lag is None else float(lag),
        alembic_revisions=revisions,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
    )


def _postgres_target(fields: _Fields, database: DatabaseTarget) -> DatabaseTarget | None:
    """The check's own DSN (a file, or inline without a password), else the environment's."""
    raw = fields.raw
    if "dsn" in raw and "dsn_file" in raw:
        fields.problem("dsn_file", "set together with dsn; set only one")
        return None
    if "dsn_file" in raw:
        return _dsn_file_target(fields)
    if "dsn" not in raw:
        return database
    dsn = raw["dsn"]
    # Never quoted, whatever it holds: a DSN may carry a password.
    if not isinstance(dsn, str) or not dsn.strip():
        fields.problem("dsn", f"must be a postgresql:// URL as text, got {_kind_of(dsn)}")
        return None
    dsn = dsn.strip()
    problem = dsn_problem(dsn)
    if problem is None and _has_password(dsn):
        problem = (
            "holds a password, and a ConfigMap is not a Secret: put the DSN in a "
            "mounted Secret and name that file with dsn_file"
        )
    if problem is not None:
        fields.problem("dsn", problem)
        return None
    return DatabaseTarget(dsn=dsn, source="dsn")


def _dsn_file_target(fields: _Fields) -> DatabaseTarget | None:
    path = fields.path("dsn_file")
    if path is None:
        return None
    if "://" in path or "@" in path:
        # A DSN written where its file's path belongs: never quote it back.
        fields.problem("dsn_file", "must be the path of a file holding the DSN, not a DSN")
        return None
    try:
        dsn = read_dsn_file(path)
    except ValueError as exc:  # names the path and the problem, never the content
        fields.problem("dsn_file", str(exc))
        return None
    return DatabaseTarget(dsn=dsn, source="dsn_file", file_path=path)


def _has_password(dsn: str) -> bool:
    parts = urlsplit(dsn)  # dsn_problem has refused what urlsplit cannot split
    if parts.password:
        return True
    # libpq also takes the password as a query parameter.
    pairs = (pair.partition("=") for pair in parts.query.split("&"))
    return any(key == "password" and value for key, _, value in pairs)


def _http(fields: _Fields, common: _Common) -> HttpSpec | None:
    url = fields.url("url")
    status = fields.status_range("expect_status")
    if url is None or status is None:
        return None
    return HttpSpec(
        name=common.name,
        policy=common.policy,
        critical=common.critical,
        url=url,
        status_min=status[0],
        status_max=status[1],
    )


def _tcp(fields: _Fields, common: _Common) -> TcpSpec | None:
    host = fields.host("host")
    port = fields.port("port")
    if host is None or port is None:
        return None
    return TcpSpec(
        name=common.name, policy=common.policy, critical=common.critical, host=host, port=port
    )


def _valid_name(raw: object) -> str | None:
    if not isinstance(raw, Mapping):
        return None
    name = raw.get("name")
    return name if isinstance(name, str) and NAME_PATTERN.fullmatch(name) else None


# ---- the keys of one mapping --------------------------------------------------------------------


class _Fields:
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
            self.problems.append(f"{self.where}: unknown key {_key(key)}{hint}")

    def policy(self, base: ProbePolicy) -> ProbePolicy:
        """`base`, with the timing keys this mapping sets."""
        changes: dict[str, Any] = {}
        for key, (field, low, high, inclusive, whole) in TIMING.items():
            value = self.number(key, minimum=low, maximum=high, inclusive=inclusive, whole=whole)
            if value is not None:
                changes[field] = value if whole else float(value)
        return replace(base, **changes)

    def number(
        self,
        key: str,
        *,
        minimum: float,
        maximum: float,
        inclusive: bool,
        whole: bool = False,
    ) -> float | int | None:
        value = self.raw.get(key, _ABSENT)
        if value is _ABSENT:
            return None
        # bool is an int in Python; `true` is not a number in a config file.
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem(
                key, f"must be {'a whole number' if whole else 'a number'}, got {_shown(value)}"
            )
            return None
        if whole and not isinstance(value, int):
            self.problem(key, f"must be a whole number, got {_shown(value)}")
            return None
        finite = isinstance(value, int) or math.isfinite(value)
        above = value >= minimum if inclusive else value > minimum
        if not (finite and above and value <= maximum):
            if inclusive:
                rule = f"must be between {minimum:g} and {maximum:g}"
            else:
                rule = f"must be greater than {minimum:g} and at most {maximum:g}"
            self.problem(key, f"{rule}, got {_shown(value)}")
            return None
        return value

    def boolean(self, key: str) -> bool:
        value = self.raw.get(key, False)
        if not isinstance(value, bool):
            self.problem(key, f"must be true or false, got {_shown(value)}")
            return False
        return value

    def choice(self, key: str, allowed: tuple[str, ...], default: str) -> str:
        value = self.raw.get(key, default)
        if not isinstance(value, str) or value not in allowed:
            self.problem(key, f"must be one of {', '.join(allowed)}, got {_shown(value)}")
            return default
        return value

    def query(self, key: str) -> str | None:
        value = self.raw.get(key, _ABSENT)
        if value is _ABSENT:
            return None
        if not isinstance(value, str) or not value.strip():
            # Not quoted: a query is long, and the type is what went wrong.
            what = "empty text" if isinstance(value, str) else _kind_of(value)
            self.problem(key, f"must be an SQL query as text, got {what}")
            return None
        return value

    def expected_text(self, key: str) -> str | None:
        value = self.raw.get(key, _ABSENT)
        if value is _ABSENT:
            return None
        if not isinstance(value, str):
            # YAML reads `expect: true` as a boolean and `expect: 1` as a number; the check
            # compares text, so the quotes are required rather than guessed.
            self.problem(key, f'must be text (quote it: expect: "..."), got {_shown(value)}')
            return None
        return value

    def path(self, key: str) -> str | None:
        value = self.raw.get(key, _ABSENT)
        if value is _ABSENT:
            return None
        if (
            not isinstance(value, str)
            or not value.strip()
            or any(ord(ch) < 32 or ord(ch) == 127 for ch in value)
            or not _utf8(value)
        ):
            self.problem(key, f"must be a file path, got {_shown(value)}")
            return None
        return value

    def readable_file(self, key: str) -> str | None:
        """A path that exists and can be opened now (a missing mount is a start-up error)."""
        path = self.path(key)
        if path is None:
            return None
        try:
            with Path(path).open("rb"):
                pass
        except FileNotFoundError:
            self.problem(key, f"file {path!r} does not exist")
        except IsADirectoryError:
            self.problem(key, f"{path!r} is a directory, not a file")
        except PermissionError:
            self.problem(key, f"file {path!r} is not readable (permission denied)")
        except OSError as exc:
            self.problem(key, f"file {path!r} cannot be read ({exc.strerror or 'error'})")
        else:
            return path
        return None

    def revisions(self, key: str) -> tuple[str, ...]:
        value = self.raw.get(key, _ABSENT)
        if value is _ABSENT:
            return ()
        if isinstance(value, str):
            items: list[object] = [value]
        elif isinstance(value, list) and value:
            items = list(value)
        else:
            what = "an empty list" if isinstance(value, list) else _shown(value)
            self.problem(key, f"{REVISION_RULE}, got {what}")
            return ()
        found: list[str] = []
        for index, item in enumerate(items):
            label = key if isinstance(value, str) else f"{key}[{index}]"
            if not isinstance(item, str) or not item or any(ch.isspace() for ch in item):
                self.problem(label, f"{REVISION_RULE}, got {_shown(item)}")
                continue
            found.append(item)
        return tuple(dict.fromkeys(found)) if len(found) == len(items) else ()

    def url(self, key: str) -> str | None:
        value = self.raw.get(key, _ABSENT)
        if value is _ABSENT:
            self.problem(key, "missing; an http check needs one")
            return None
        # The URL itself is never quoted: it may carry a token or a password.
        if not isinstance(value, str):
            self.problem(key, f"must be an http:// or https:// URL, got {_kind_of(value)}")
            return None
        problem = _url_problem(value)
        if problem is not None:
            self.problem(key, problem)
            return None
        return value

    def status_range(self, key: str) -> tuple[int, int] | None:
        value = self.raw.get(key, _ABSENT)
        if value is _ABSENT:
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
            self.problem(key, f"{STATUS_RULE}, got {_shown(value)}")
            return None
        if low > high:
            self.problem(key, f"the range starts at {low}, above its end {high}")
            return None
        return (low, high)

    def host(self, key: str) -> str | None:
        value = self.raw.get(key, _ABSENT)
        if value is _ABSENT:
            self.problem(key, "missing; a tcp check needs one")
            return None
        if not isinstance(value, str) or not value or not valid_host(value):
            self.problem(key, f"must be a host name or address, got {_shown(value)}")
            return None
        return value

    def port(self, key: str) -> int | None:
        value = self.raw.get(key, _ABSENT)
        if value is _ABSENT:
            self.problem(key, "missing; a tcp check needs one")
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            self.problem(key, f"must be a port between 1 and 65535, got {_shown(value)}")
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


def _kind_of(value: object) -> str:
    """What a value is, without showing it."""
    if value is None:
        return "null"
    for types, label in _KINDS_OF:
        if isinstance(value, types):
            return label
    return f"a {type(value).__name__}"


def _shown(value: object) -> str:
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
        return f"text {_clip(value)}" if value else "empty text"
    return _kind_of(value)


def _key(key: object) -> str:
    return _clip(key) if isinstance(key, str) else _shown(key)


def _clip(text: str) -> str:
    """repr() of at most 40 characters: one line, every control character escaped."""
    if len(text) <= _SHOWN_CHARS:
        return repr(text)
    return repr(text[:_SHOWN_CHARS]) + "..."


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 200 else line[:200] + "..."


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no file system path can hold it
        return False
    return True
