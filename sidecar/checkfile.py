"""The check file (SIDECAR_CONFIG_FILE): YAML or TOML in, check specs out.

Nothing here raises for a bad file: every problem is one line appended to `problems`, naming
the check (its index, and its name when known) and the key, so that all of them are reported at
once, as the SIDECAR_* variables are. A line never quotes a DSN, a URL or a password: a refused
value may be one, and the lines end up on stderr and in the pod's events.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from sidecar.checkspec import (
    CRITICALITIES,
    KINDS,
    NAME_PATTERN,
    AnySpec,
    CheckPolicy,
    DatabaseTarget,
    HttpSpec,
    PostgresSpec,
    TcpSpec,
)
from sidecar.documents import MAX_CHECK_FILE_BYTES, ORIGIN, UNREADABLE, read_document
from sidecar.fields import ABSENT, COMMON_KEYS, KIND_KEYS, TIMING, Fields, kind_of, shown, shown_key
from sidecar.inputs import dsn_passwords, dsn_problem, read_dsn_file
from sidecar.options import Setting

# Tests and the chart's schema check read these from here.
__all__ = [
    "COMMON_KEYS",
    "KIND_KEYS",
    "MAX_CHECK_FILE_BYTES",
    "TIMING",
    "load_check_file",
    "parse_checks",
]

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


def load_check_file(
    path: str, *, defaults: CheckPolicy, database: DatabaseTarget, problems: list[str]
) -> tuple[AnySpec, ...]:
    """The checks of the file at `path`; problems appended, never raised."""
    document = read_document(path, problems)
    if document is UNREADABLE:
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
    it and each check's own keys override both. `database` is the environment's target: a
    postgres check that names neither `dsn` nor `dsn_file` uses it. Only the files the document
    names (dsn_file, ca_file, cert_file, key_file) are read.
    """
    if document is None:
        problems.append(f"{origin}: the file is empty; it must hold a 'checks' list")
        return ()
    if not isinstance(document, Mapping):
        problems.append(f"{origin}: must be a mapping with a 'checks' list, got {shown(document)}")
        return ()
    for key in document:
        if key not in ("defaults", "checks"):
            problems.append(f"{origin}: unknown key {shown_key(key)}; allowed: checks, defaults")

    policy = _defaults(document.get("defaults", ABSENT), defaults, problems, origin)
    raw_checks = document.get("checks", ABSENT)
    if raw_checks is ABSENT:
        problems.append(f"{origin}: checks: missing; list at least one check")
        return ()
    if not isinstance(raw_checks, list):
        problems.append(f"{origin}: checks: must be a list of checks, got {shown(raw_checks)}")
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


def _defaults(raw: object, base: CheckPolicy, problems: list[str], origin: str) -> CheckPolicy:
    """The schedule every check starts from: `base` with the file's `defaults` applied."""
    if raw is ABSENT:
        return base
    if not isinstance(raw, Mapping):
        problems.append(f"{origin}: defaults: must be a mapping, got {shown(raw)}")
        return base
    for key in raw:
        if key not in TIMING:
            allowed = ", ".join(sorted(TIMING))
            problems.append(f"{origin}: defaults: unknown key {shown_key(key)}; allowed: {allowed}")
    return Fields(f"{origin}: defaults", raw, problems).policy(base)


# ---- one check ----------------------------------------------------------------------------------


def _parse_check(
    raw: object,
    where: str,
    policy: CheckPolicy,
    database: DatabaseTarget,
    problems: list[str],
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

    # What every kind's spec takes.
    common: dict[str, Any] = {
        "name": name or "",
        "policy": fields.policy(policy),
        "critical": fields.choice("criticality", CRITICALITIES, "critical") == "critical",
    }
    spec: AnySpec | None = None
    if known_kind == "postgres":
        spec = _postgres(fields, common, database)
    elif known_kind == "http":
        spec = _http(fields, common)
    elif known_kind == "tcp":
        spec = _tcp(fields, common)
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
        dsn = read_dsn_file(path)
    except ValueError as exc:  # names the path and the problem, never the content
        fields.problem("dsn_file", str(exc))
        return None
    return DatabaseTarget(dsn=dsn, source="dsn_file", file_path=path)


def _http(fields: Fields, common: dict[str, Any]) -> HttpSpec | None:
    url = fields.url("url")
    status = fields.status_range("expect_status")
    if url is None or status is None:
        return None
    return HttpSpec(
        **common,
        url=url,
        status_min=status[0],
        status_max=status[1],
    )


def _tcp(fields: Fields, common: dict[str, Any]) -> TcpSpec | None:
    host = fields.host("host")
    port = fields.port("port")
    if host is None or port is None:
        return None
    return TcpSpec(**common, host=host, port=port)


def _valid_name(raw: object) -> str | None:
    if not isinstance(raw, Mapping):
        return None
    name = raw.get("name")
    return name if isinstance(name, str) and NAME_PATTERN.fullmatch(name) else None
