"""The check file (SIDECAR_CONFIG_FILE): YAML or TOML in, check specs out.

Nothing here raises for a bad file: every problem is one line appended to `problems`, naming
the check (its index, and its name when known) and the key, so that all of them are reported at
once, as the SIDECAR_* variables are. A line quotes a refused value only when it cannot be a
secret (names, kinds, numbers, hosts, paths): a DSN, a URL or a password is described, never
shown, and of a parser's error only the position and its short reason are kept (its full text
quotes the lines around the error). The lines end up on stderr and in the pod's events.
"""

from __future__ import annotations

import difflib
import functools
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from sidecar.checkspec import (
    CRITICALITIES,
    DEFAULT_STATUS,
    KINDS,
    NAME_PATTERN,
    AnySpec,
    CheckPolicy,
    DatabaseTarget,
    HttpSpec,
    PostgresSpec,
    TcpSpec,
)
from sidecar.inputs import (
    dsn_passwords,
    dsn_problem,
    read_dsn_file,
    read_head,
    read_text_file,
    unprintable,
    valid_host,
)
from sidecar.options import PER_CHECK, PORT, PORT_RULE, Setting

if TYPE_CHECKING:
    import yaml

ORIGIN: Final = "SIDECAR_CONFIG_FILE"
# A check list is a few kilobytes; anything near this is a wrong mount, not a config.
MAX_CHECK_FILE_BYTES: Final = 1024 * 1024
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
# Up to a day: a replica further behind than that is broken, not lagging.
MAX_REPLICA_LAG: Final = Setting(
    env="",
    field="max_replica_lag_seconds",
    type="seconds",
    above_minimum=True,
    maximum=86400,
    help="the largest replay lag a replica check accepts",
)
NAME_RULE: Final = (
    "must be 1 to 63 lowercase letters, digits, '-' or '_', "
    "starting and ending with a letter or digit"
)
STATUS_RANGE: Final = (100, 599)
STATUS_RULE: Final = (
    f"must be a status code ({STATUS_RANGE[0]}-{STATUS_RANGE[1]}) or a range "
    f'"A-B" such as "{DEFAULT_STATUS[0]}-{DEFAULT_STATUS[1]}"'
)
REVISION_RULE: Final = (
    "must be a revision id as text, or a list of them (quote one that looks like a number)"
)
URL_RULE: Final = "must be an http:// or https:// URL"
_STATUS_TEXT: Final = re.compile(r"\s*([0-9]{3})\s*(?:-\s*([0-9]{3})\s*)?")
_BOOL_TAG: Final = "tag:yaml.org,2002:bool"
_CORE_BOOL: Final = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_SHOWN_CHARS: Final = 40
# A key the mapping does not set (None is a value: YAML's null).
ABSENT: Final = object()


def load_check_file(
    path: str, *, defaults: CheckPolicy, database: DatabaseTarget, problems: list[str]
) -> tuple[AnySpec, ...]:
    """The checks of the file at `path`; problems appended, never raised."""
    before = len(problems)
    document = _read_document(path, problems)
    if len(problems) > before:
        return ()
    return parse_checks(document, defaults=defaults, database=database, problems=problems)


def parse_checks(
    document: object,
    *,
    defaults: CheckPolicy,
    database: DatabaseTarget,
    problems: list[str],
    origin: str = ORIGIN,
) -> tuple[AnySpec, ...]:
    """Check specs from a parsed document (mappings, lists, scalars); problems appended.

    `defaults` is the schedule from the SIDECAR_* variables; the document's `defaults` override
    it and each check's own keys override both. A postgres check that names neither `dsn` nor
    `dsn_file` uses `database`, the environment's. Only the files the document names
    (dsn_file, ca_file, cert_file, key_file) are read.
    """
    if not isinstance(document, Mapping):
        problems.append(
            f"{origin}: the file is empty; it must hold a 'checks' list"
            if document is None
            else f"{origin}: must be a mapping with a 'checks' list, got {shown(document)}"
        )
        return ()
    _refuse_unknown(document, ("checks", "defaults"), f"{origin}: ", problems)
    policy = defaults
    raw_defaults = document.get("defaults", ABSENT)
    if isinstance(raw_defaults, Mapping):
        _refuse_unknown(raw_defaults, tuple(sorted(TIMING)), f"{origin}: defaults: ", problems)
        policy = Fields(f"{origin}: defaults", raw_defaults, problems).policy(defaults)
    elif raw_defaults is not ABSENT:
        problems.append(f"{origin}: defaults: must be a mapping, got {shown(raw_defaults)}")
    raw_checks = document.get("checks", ABSENT)
    if not isinstance(raw_checks, list) or not raw_checks:
        if raw_checks is ABSENT:
            problem = "missing; list at least one check"
        elif isinstance(raw_checks, list):
            problem = "must list at least one check, got an empty list"
        else:
            problem = f"must be a list of checks, got {shown(raw_checks)}"
        problems.append(f"{origin}: checks: {problem}")
        return ()

    specs: list[AnySpec] = []
    first_index: dict[str, int] = {}
    for index, raw in enumerate(raw_checks):
        spec = _parse_check(raw, f"{origin}: checks[{index}]", policy, database, problems)
        name = _valid_name(raw)
        if name in first_index:
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


def _refuse_unknown(
    raw: Mapping[Any, Any], allowed: tuple[str, ...], where: str, problems: list[str]
) -> None:
    for key in raw:
        if key not in allowed:
            problems.append(f"{where}unknown key {shown_key(key)}; allowed: {', '.join(allowed)}")


def _parse_check(
    raw: object, where: str, policy: CheckPolicy, database: DatabaseTarget, problems: list[str]
) -> AnySpec | None:
    """One check's spec, or None when it has a problem (appended)."""
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: must be a mapping, got {shown(raw)}")
        return None
    before = len(problems)
    name = _valid_name(raw)
    if name is not None:
        where = f"{where} ({name})"
    fields = Fields(where, raw, problems)
    if "name" not in raw:
        problems.append(f"{where}: name: missing; every check needs one")
    elif name is None:
        problems.append(f"{where}: name: {NAME_RULE}, got {shown(raw['name'])}")
    kind = raw.get("kind", ABSENT)
    if kind is ABSENT:
        problems.append(f"{where}: kind: missing; must be one of {', '.join(KINDS)}")
    elif kind not in KINDS:
        problems.append(f"{where}: kind: must be one of {', '.join(KINDS)}, got {shown(kind)}")
    known_kind = kind if isinstance(kind, str) and kind in KINDS else None
    fields.refuse_unknown_keys(known_kind)
    common = {"name": name or "", "policy": fields.policy(policy)}
    criticality = fields.read(
        "criticality",
        lambda v: v in CRITICALITIES,
        f"must be one of {', '.join(CRITICALITIES)}",
        default="critical",
    )
    common["critical"] = criticality == "critical"
    build = {"postgres": _postgres, "http": _http, "tcp": _tcp}.get(str(known_kind))
    spec = build(fields, common, database) if build else None
    # A spec is only built from a check without a single problem.
    return spec if name is not None and len(problems) == before else None


def _postgres(
    fields: Fields, common: dict[str, Any], database: DatabaseTarget
) -> PostgresSpec | None:
    raw = fields.raw
    target = _postgres_target(fields, database)
    require_primary = fields.boolean("require_primary")
    allow_replica = fields.boolean("allow_replica")
    lag = fields.number("max_replica_lag_seconds", MAX_REPLICA_LAG)
    if require_primary and allow_replica:
        fields.problem("allow_replica", "contradicts require_primary: true; set only one of them")
    lag_alone = "max_replica_lag_seconds" in raw and not allow_replica
    if lag_alone and not {"allow_replica", "max_replica_lag_seconds"} & fields.refused:
        fields.problem("max_replica_lag_seconds", "only valid with allow_replica: true")
    query = fields.read(
        "query",
        lambda v: isinstance(v, str) and bool(v.strip()),
        "must be an SQL query as text",
        # Not quoted: a query is long, and the type is what went wrong.
        got=lambda v: "empty text" if isinstance(v, str) else kind_of(v),
    )
    # YAML reads `expect: true` as a boolean and `expect: 1` as a number; the check compares
    # text, so the quotes are required rather than guessed.
    expect = fields.read("expect", _is_text, 'must be text (quote it: expect: "...")')
    if "expect" in raw and "query" not in raw:
        fields.problem("expect", "only valid with query")
    ca_file, cert_file, key_file = map(fields.readable_file, ("ca_file", "cert_file", "key_file"))
    for key, other, what in (
        ("cert_file", "key_file", "the client certificate's private key"),
        ("key_file", "cert_file", "the client certificate"),
    ):
        if key in raw and other not in raw:
            fields.problem(key, f"needs {other} too ({what})")
    revisions = fields.revisions("alembic_revision")
    if target is None:
        return None
    return PostgresSpec(
        **common,
        target=target,
        query=query,
        expect=expect,
        require_primary=require_primary,
        allow_replica=allow_replica,
        max_replica_lag_seconds=lag,
        alembic_revisions=revisions,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
    )


def _postgres_target(fields: Fields, database: DatabaseTarget) -> DatabaseTarget | None:
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
        fields.problem("dsn", f"must be a postgresql:// URL as text, got {kind_of(dsn)}")
        return None
    dsn = dsn.strip()
    problem = dsn_problem(dsn)
    if problem is None and dsn_passwords(dsn):
        problem = (
            "holds a password, and a ConfigMap is not a Secret: put the DSN in a "
            "mounted Secret and name that file with dsn_file"
        )
    if problem is not None:
        fields.problem("dsn", problem)
        return None
    return DatabaseTarget(dsn=dsn, source="dsn")


def _dsn_file_target(fields: Fields) -> DatabaseTarget | None:
    path = fields.path("dsn_file")
    if path is None:
        return None
    if "://" in path or "@" in path:
        # A DSN written where its file's path belongs: never quote it back.
        fields.problem("dsn_file", "must be the path of a file holding the DSN, not a DSN")
        return None
    try:
        return DatabaseTarget(dsn=read_dsn_file(path), source="dsn_file", file_path=path)
    except ValueError as exc:  # names the path and the problem, never the content
        fields.problem("dsn_file", str(exc))
        return None


def _http(fields: Fields, common: dict[str, Any], _database: object) -> HttpSpec | None:
    # The URL itself is never quoted: it may carry a token or a password.
    url = fields.read(
        "url", _is_text, URL_RULE, missing="missing; an http check needs one", got=kind_of
    )
    if url is not None and (problem := _url_problem(url)) is not None:
        fields.problem("url", problem)
        url = None
    status = fields.status_range("expect_status")
    if url is None or status is None:
        return None
    return HttpSpec(**common, url=url, status_min=status[0], status_max=status[1])


def _tcp(fields: Fields, common: dict[str, Any], _database: object) -> TcpSpec | None:
    missing = "missing; a tcp check needs one"
    host = fields.read("host", _is_host, "must be a host name or address", missing=missing)
    port = fields.read("port", _is_port, PORT_RULE, missing=missing)
    if host is None or port is None:
        return None
    return TcpSpec(**common, host=host, port=port)


def _valid_name(raw: object) -> str | None:
    name = raw.get("name") if isinstance(raw, Mapping) else None
    return name if isinstance(name, str) and NAME_PATTERN.fullmatch(name) else None


class Fields:
    """Typed reads of one mapping's keys. A bad value appends one problem line and reads as
    None (or the default), so that every key is judged even after the first problem."""

    def __init__(self, where: str, raw: Mapping[Any, Any], problems: list[str]) -> None:
        self.where = where
        self.raw = raw
        self.problems = problems
        # Keys refused so far: a rule that depends on one of them stays quiet.
        self.refused: set[str] = set()

    def problem(self, key: str, message: str) -> None:
        self.refused.add(key)
        self.problems.append(f"{self.where}: {key}: {message}")

    def read(
        self,
        key: str,
        valid: Callable[[Any], bool],
        rule: str,
        *,
        default: Any = None,
        missing: str | None = None,
        got: Callable[[Any], str] | None = None,
    ) -> Any:
        """The key's value if `valid`; else the problem "`rule`, got ..." and `default`.
        An absent key reads as `default`, or is the problem `missing` when that is given."""
        value = self.raw.get(key, ABSENT)
        if value is ABSENT:
            if missing:
                self.problem(key, missing)
            return default
        if valid(value):
            return value
        self.problem(key, f"{rule}, got {(got or shown)(value)}")
        return default

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
        found: dict[str, Any] = {s.field: self.number(key, s) for key, s in TIMING.items()}
        return replace(base, **{name: value for name, value in found.items() if value is not None})

    def number(self, key: str, rule: Setting) -> float | int | None:
        """The key's number within `rule`'s range (a float unless whole); None if absent."""
        whole = rule.type == "whole"
        # bool is an int in Python; `true` is not a number in a config file.
        value = self.read(
            key,
            lambda v: not isinstance(v, bool) and isinstance(v, int if whole else int | float),
            "must be a whole number" if whole else "must be a number",
        )
        if value is None:
            return None
        if not rule.in_range(value):
            self.problem(key, f"{rule.rule}, got {shown(value)}")
            return None
        return value if whole else float(value)

    def boolean(self, key: str) -> bool:
        return bool(
            self.read(key, lambda v: isinstance(v, bool), "must be true or false", default=False)
        )

    def path(self, key: str) -> str | None:
        value: str | None = self.read(key, _is_path, "must be a file path")
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
        if not isinstance(value, str) and not (isinstance(value, list) and value):
            what = "an empty list" if isinstance(value, list) else shown(value)
            self.problem(key, f"{REVISION_RULE}, got {what}")
            return ()
        items: list[object] = [value] if isinstance(value, str) else list(value)
        found: list[str] = []
        for index, item in enumerate(items):
            if not isinstance(item, str) or not item or any(ch.isspace() for ch in item):
                label = key if isinstance(value, str) else f"{key}[{index}]"
                self.problem(label, f"{REVISION_RULE}, got {shown(item)}")
            else:
                found.append(item)
        return tuple(dict.fromkeys(found)) if len(found) == len(items) else ()

    def status_range(self, key: str) -> tuple[int, int] | None:
        value = self.raw.get(key, ABSENT)
        if value is ABSENT:
            return DEFAULT_STATUS
        low = high = 0  # refused below unless the value is a code or a range
        if isinstance(value, int) and not isinstance(value, bool):
            low = high = value
        elif isinstance(value, str) and (match := _STATUS_TEXT.fullmatch(value)):
            low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        lowest, highest = STATUS_RANGE
        if not (lowest <= low <= highest and lowest <= high <= highest):
            self.problem(key, f"{STATUS_RULE}, got {shown(value)}")
            return None
        if low > high:
            self.problem(key, f"the range starts at {low}, above its end {high}")
            return None
        return (low, high)


def _is_text(value: object) -> bool:
    return isinstance(value, str)


def _is_host(value: object) -> bool:
    return isinstance(value, str) and bool(value) and valid_host(value)


def _is_port(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and PORT.in_range(value)


def _is_path(value: object) -> bool:
    return (
        isinstance(value, str)
        and bool(value.strip())
        and not unprintable(value, spaces=False)
        and _utf8(value)
    )


def _url_problem(value: str) -> str | None:
    """Why `value` is not a usable http(s) URL, without quoting any of it."""
    if unprintable(value):
        return f"{URL_RULE} without whitespace or control characters"
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError on a port that is not a number
        hostname = parts.hostname
    except ValueError:
        return f"{URL_RULE}; this one is malformed (bad port or brackets)"
    if parts.scheme.lower() not in ("http", "https"):
        return f"{URL_RULE}; this one has another scheme or none"
    if "@" in parts.netloc:
        return (
            "must not hold user:password@: the check file is not a Secret "
            "(serve the probe path without authentication)"
        )
    if not hostname or not valid_host(hostname):
        return f"{URL_RULE} with a host name or address"
    return None


def _read_document(path: str, problems: list[str]) -> object:
    """The parsed file; None with a problem appended when it cannot be read or parsed."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".yaml", ".yml", ".toml"):
        problems.append(
            f"{ORIGIN}: file {path!r} has {repr(suffix) if suffix else 'no extension'}; "
            "name it .yaml, .yml (YAML) or .toml (TOML)"
        )
        return None
    try:
        # utf-8-sig: an editor's byte order mark is not a syntax error.
        text = read_text_file(path, MAX_CHECK_FILE_BYTES, encoding="utf-8-sig")
    except ValueError as exc:
        problems.append(f"{ORIGIN}: file {path!r} {exc}")
        return None
    syntax = "TOML" if suffix == ".toml" else "YAML"
    try:
        return tomllib.loads(text) if syntax == "TOML" else _load_yaml(text)
    except _SyntaxProblem as exc:
        problems.append(f"{ORIGIN}: file {path!r} is not valid YAML: {exc}")
    except tomllib.TOMLDecodeError as exc:
        # Its message already ends with "(at line L, column C)" and never quotes a value.
        problems.append(f"{ORIGIN}: file {path!r} is not valid TOML: {one_line(str(exc))}")
    except ImportError:
        problems.append(
            f"{ORIGIN}: file {path!r} is YAML, but PyYAML is not installed; use a .toml file"
        )
    except RecursionError:
        problems.append(f"{ORIGIN}: file {path!r} is not usable {syntax}: nested too deeply")
    except (ValueError, TypeError, OverflowError) as exc:  # 2024-13-45, a 5000-digit integer
        # Python's own message suggests sys.set_int_max_str_digits(), no help to a reader.
        too_long = "integer string conversion" in str(exc)
        reason = "an integer has too many digits" if too_long else one_line(str(exc))
        problems.append(f"{ORIGIN}: file {path!r} is not usable {syntax}: {reason}")
    return None


class _SyntaxProblem(Exception):
    """A YAML syntax error, reduced to its position and its short reason."""


def _load_yaml(text: str) -> object:
    import yaml  # noqa: PLC0415 -- only a YAML check file needs it

    try:
        # The loader checks for unprintable characters as it is built: inside the `try`.
        loader = _unique_key_loader()(text)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise _SyntaxProblem(
            where + one_line(exc.problem or exc.context or "syntax error")
        ) from None
    except yaml.reader.ReaderError as exc:  # a control character, found by offset
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - text.rfind("\n", 0, exc.position)
        char = clip(chr(exc.character)) if isinstance(exc.character, int) else ""
        raise _SyntaxProblem(f"line {line}, column {column}: control character {char}") from None
    except yaml.YAMLError as exc:
        raise _SyntaxProblem(one_line(str(exc))) from None


@functools.cache
def _unique_key_loader() -> type[yaml.SafeLoader]:
    """yaml.SafeLoader, but a key repeated in one mapping is an error: PyYAML silently keeps
    the last one, so `name: a` ... `name: b` would drop a setting without a word."""
    import yaml  # noqa: PLC0415 -- see _load_yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        # YAML 1.2 core booleans: only true/false (any case form the spec lists). PyYAML reads
        # YAML 1.1, where yes/no/on/off are booleans too: `require_primary: no` would then
        # mean something other than what the README promises, so they stay text and are
        # refused where a boolean is expected.
        yaml_implicit_resolvers = {  # noqa: RUF012 -- PyYAML reads it from the class
            first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
            for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
        }

        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
            seen: set[tuple[str, str]] = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    key = (key_node.tag, str(key_node.value))
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {clip(key[1])}", key_node.start_mark
                        )
                    seen.add(key)
            return super().construct_mapping(node, deep=deep)

    UniqueKeyLoader.add_implicit_resolver(_BOOL_TAG, _CORE_BOOL, list("tTfF"))
    return UniqueKeyLoader


def _a(kind: str) -> str:
    return f"an {kind}" if kind == "http" else f"a {kind}"


def kind_of(value: object) -> str:
    """What a value is, without showing it."""
    for types, label in (
        (type(None), "null"),
        (bool, "a boolean"),  # before int: bool is an int in Python
        ((int, float), "a number"),
        (str, "text"),
        (list, "a list"),
        (Mapping, "a mapping"),
    ):
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
    return repr(text[:_SHOWN_CHARS]) + ("..." if len(text) > _SHOWN_CHARS else "")


def one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 200 else line[:200] + "..."


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no file system path can hold it
        return False
    return True
