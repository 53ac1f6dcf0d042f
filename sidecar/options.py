"""Every SIDECAR_* setting, declared once: variable, flag, type, default, range and help.

Everything else derives from `SETTINGS`: reading the environment (`config.Settings`), the flags
and `--help` (`__main__`), the refusal lines, the check file's `defaults:` and per-check timing
keys (`sidecar.fields`, the ones with a `file_key`) and their JSON Schema (`sidecar.schema`). A
test compares the README's settings table with this table.

To add a setting: append one `Setting` here; add a typed field named `Setting.field`, its
default `options.default(...)`, to `config.Settings` (or, for a per-check timing with a
`file_key`, to `checkspec.CheckPolicy`), where the parsed value lands by that name; add its row
to the README's settings table; for a `file_key`, run .ci/check-file-schema. A setting a
check uses reaches it as an argument: add it to `kinds.Needs`, which `app` fills from Settings.

Imports only the leaf `inputs`.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from sidecar.inputs import valid_host

Type = Literal["seconds", "whole", "choice", "text", "host"]
# A Service named like our prefix gives every pod SIDECAR_PORT=tcp://10.0.0.1:8081 and these.
_SERVICE_LINK_NAME: Final = re.compile(
    r"^[A-Z0-9_]+_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT|PORT_[0-9]+_[A-Z]+(_[A-Z]+)*)$"
)
_SERVICE_LINK_VALUE: Final = re.compile(r"^(tcp|udp|sctp)://", re.IGNORECASE)
# Characters of a refused value quoted in its line; the rest is cut.
SHOWN_CHARS: Final = 80


@dataclass(frozen=True, slots=True, kw_only=True)
class Value:
    """What a value may be: its type and range, and a few words on what it means. Every setting
    is one; so is a number only the check file takes (the replica lag bound), so that its
    range, refusal wording and schema come from the same code."""

    type: Type
    help: str
    minimum: float = 0
    maximum: float = math.inf
    # True: the value must be greater than `minimum`; False: at least `minimum`.
    above_minimum: bool = False

    @property
    def rule(self) -> str:
        """The range as one phrase: 'must be greater than 0 and at most 3600'."""
        low, high = f"{self.minimum:g}", f"{self.maximum:g}"
        if self.above_minimum:
            return f"must be greater than {low} and at most {high}"
        if self.type == "whole":
            return f"must be between {low} and {high}"
        return f"must be at least {low} and at most {high}"

    def in_range(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        above = value > self.minimum if self.above_minimum else value >= self.minimum
        return above and value <= self.maximum


@dataclass(frozen=True, slots=True, kw_only=True)
class Setting(Value):
    """One setting. `field` is its attribute on Settings (or on CheckPolicy, with `file_key`)."""

    env: str
    field: str
    default: float | str | None = None
    choices: tuple[str, ...] = ()
    # The key of the check file's `defaults:` and of each check, for a per-check timing.
    file_key: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.env.removeprefix("SIDECAR_").lower().replace("_", "-")

    @property
    def help_line(self) -> str:
        if self.choices:
            return f"{self.help}: {', '.join(self.choices)} (default {self.default})"
        if self.default is None:
            return self.help
        shown = f"{self.default:g}" if isinstance(self.default, float | int) else self.default
        return f"{self.help} (default {shown})"

    def parse(self, raw: str) -> tuple[float | int | str | None, str | None]:
        """(value, None), or (None, the problem without the variable's name)."""
        if self.env in SERVICE_LINK_TARGETS and _SERVICE_LINK_VALUE.match(raw):
            return None, (
                f"{shown(raw)} looks like a Kubernetes service link (from a Service named "
                f"'sidecar' in the namespace); set {self.env} on the container explicitly, "
                "or set enableServiceLinks: false on the pod"
            )
        if self.type in ("seconds", "whole"):
            return self._number(raw)
        if self.type == "choice":
            if raw.lower() not in self.choices:
                return None, f"must be one of {', '.join(self.choices)}, got {shown(raw)}"
            return raw.lower(), None
        if self.type == "host" and not valid_host(raw):
            return None, f"not a host name or address: {shown(raw)}"
        return raw, None

    def _number(self, raw: str) -> tuple[float | int | None, str | None]:
        value: float | int | None = None
        # Python's own number syntax is wider than a setting's: `8_081`, Arabic-Indic or
        # fullwidth digits would be taken as numbers.
        if raw.isascii() and "_" not in raw:
            with contextlib.suppress(ValueError):
                value = int(raw, 10) if self.type == "whole" else float(raw)
        if value is None:
            what = "a whole number" if self.type == "whole" else "a number"
            return None, f"not {what}: {shown(raw)}"
        if not self.in_range(value):
            return None, f"{self.rule}, got {shown(raw)}"
        return value, None


def shown(raw: str) -> str:
    """A refused value as its line quotes it: cut, so that a pasted file is not the line."""
    return repr(raw) if len(raw) <= SHOWN_CHARS else repr(raw[:SHOWN_CHARS]) + "..."


# One line of declaration per setting, as a table: the columns line up on purpose.
# fmt: off
SETTINGS: Final = (
    Setting(env="SIDECAR_DATABASE_URL", field="database_url", type="text",
            help="a postgresql:// DSN (prefer the _FILE form: argv is visible in ps)"),
    Setting(env="SIDECAR_DATABASE_URL_FILE", field="database_url_file", type="text",
            help="a file holding the DSN, e.g. a mounted Secret"),
    Setting(env="SIDECAR_CONFIG_FILE", field="config_file", type="text",
            help="a YAML (.yaml, .yml) or TOML (.toml) file listing the checks to run"),
    # ::, every address family (IPv6 and IPv4 on one socket; IPv4 only where the kernel has
    # no IPv6): kubelet reaches the pod IP in IPv4, IPv6 and dual-stack clusters alike.
    Setting(env="SIDECAR_HOST", field="host", type="host", default="::",
            help="listen address (:: for every address family, 0.0.0.0 for IPv4 only)"),
    Setting(env="SIDECAR_PORT", field="port", type="whole", default=8081, minimum=1,
            maximum=65535, help="listen port"),
    Setting(env="SIDECAR_CHECK_INTERVAL", field="interval", file_key="interval_seconds",
            type="seconds", default=5.0, above_minimum=True, maximum=3600,
            help="seconds between checks while healthy"),
    Setting(env="SIDECAR_CHECK_TIMEOUT", field="timeout", file_key="timeout_seconds",
            type="seconds", default=2.0, above_minimum=True, maximum=600,
            help="seconds one check may take, connect and query"),
    Setting(env="SIDECAR_BACKOFF_MAX", field="backoff_max", file_key="backoff_max_seconds",
            type="seconds", default=30.0, above_minimum=True, maximum=3600,
            help="cap of the retry delay while failing, seconds"),
    Setting(env="SIDECAR_FAILURE_THRESHOLD", field="failure_threshold",
            file_key="failure_threshold", type="whole", default=1, minimum=1, maximum=1000,
            help="failures in a row before not ready"),
    Setting(env="SIDECAR_SUCCESS_THRESHOLD", field="success_threshold",
            file_key="success_threshold", type="whole", default=1, minimum=1, maximum=1000,
            help="successes in a row before ready again"),
    Setting(env="SIDECAR_DRAIN_SECONDS", field="drain_seconds", type="seconds", default=5.0,
            maximum=3600, help="seconds to keep answering after SIGTERM"),
    # Kubelet and Prometheus need a handful; the cap bounds descriptors, not normal traffic.
    Setting(env="SIDECAR_MAX_CONNECTIONS", field="max_connections", type="whole",
            default=1024, minimum=1, maximum=65535,
            help="open HTTP connections at most; beyond it the oldest is closed"),
    Setting(env="SIDECAR_DATABASE_MAX_CONNECTION_AGE", field="max_connection_age",
            type="seconds", default=300.0, maximum=86400,
            help="seconds a postgres check keeps its connection; 0: a new one every check"),
    Setting(env="SIDECAR_LOG_LEVEL", field="log_level", type="choice", default="info",
            choices=("debug", "info", "warning", "error", "critical"), help="log level"),
    Setting(env="SIDECAR_LOG_FORMAT", field="log_format", type="choice", default="json",
            choices=("json", "console"), help="log format"),
)
# fmt: on
BY_FIELD: Final = {setting.field: setting for setting in SETTINGS}
# Every port anywhere (PGPORT, a check's) has SIDECAR_PORT's range.
PORT: Final = BY_FIELD["port"]
PORT_RULE: Final = f"must be a port between {PORT.minimum:g} and {PORT.maximum:g}"
# The per-check timings: the check file's `defaults:` keys and each check's own.
PER_CHECK: Final = tuple(setting for setting in SETTINGS if setting.file_key)
# Edits to SIDECAR that still count as a slip of our prefix (SIDCAR, SIDEACR), not another word.
PREFIX_SLIPS: Final = 2
# Kubernetes service links can only collide with these two (`<SERVICE>_HOST` is not one).
SERVICE_LINK_TARGETS: Final = ("SIDECAR_PORT", "SIDECAR_HOST")


def default(field: str) -> Any:
    """The declared default of the setting whose field is `field`."""
    return BY_FIELD[field].default


def unknown_variables(environ: Iterable[str]) -> list[tuple[str, str | None]]:
    """SIDECAR_* names that are no setting, with the closest setting's name (or None).

    Never an error: Kubernetes service links (`SIDECAR_SERVICE_HOST`, `SIDECAR_PORT_8081_TCP`,
    ...) are left out quietly, any other name is worth one warning, since a typo would
    otherwise be silently ignored.
    """
    known = [setting.env for setting in SETTINGS]
    found: list[tuple[str, str | None]] = []
    for name in sorted(environ):
        if not name.startswith("SIDECAR_"):
            meant = _prefix_typo(name, known)
            if meant is not None:
                found.append((name, meant))
            continue
        if name in known or _SERVICE_LINK_NAME.match(name):
            continue
        # Imported here: only a start with an unknown name pays for difflib (~0.2 MiB RSS).
        import difflib  # noqa: PLC0415

        # Matched without the shared prefix, which would make every name look close.
        guess = difflib.get_close_matches(name[8:], [env[8:] for env in known], n=1)
        found.append((name, f"SIDECAR_{guess[0]}" if guess else None))
    return found


def _prefix_typo(name: str, known: list[str]) -> str | None:
    """The setting `name` was meant as, when only its prefix is off: another case
    (`sidecar_port`), a slip in SIDECAR (`SIDCAR_PORT`, `SIDECARPORT`, `SIDECAR-PORT`), or more
    in front (`HEALTH_SIDECAR_PORT`). Else None: a name that merely ends like one of ours
    (`POSTGRES_PORT`) is someone else's. One string comparison per setting for most names."""
    upper = name.upper().replace("-", "_").replace(".", "_")
    for env in known:
        tail = env.removeprefix("SIDECAR_")
        if not upper.endswith(tail):
            continue
        head = upper.removesuffix(tail).rstrip("_")
        if head.endswith("SIDECAR") or _edits(head, "SIDECAR") <= PREFIX_SLIPS:
            return env
    return None


def _edits(a: str, b: str) -> int:
    """Levenshtein distance: single-character insertions, deletions and substitutions.

    Not difflib: every start meets names that end like ours (a pod's service links,
    `POSTGRES_PORT`), and importing difflib for them would cost each start ~0.2 MiB."""
    previous = list(range(len(b) + 1))
    for i, char in enumerate(a, 1):
        current = [i]
        for j, other in enumerate(b, 1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char != other))
            )
        previous = current
    return previous[-1]


def values(environ: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """Every setting's value by field (the default when unset or blank), and problem lines."""
    found: dict[str, Any] = {}
    problems: list[str] = []
    for setting in SETTINGS:
        # A byte order mark: a value pasted from, or a Secret made of, an editor's file (the
        # DSN was refused as an unsupported scheme, whose name looked right).
        raw = (environ.get(setting.env) or "").strip().removeprefix("\ufeff").strip()
        if not raw:
            found[setting.field] = setting.default
            continue
        value, problem = setting.parse(raw)
        if problem is not None:
            problems.append(f"{setting.env}: {problem}")
            value = setting.default
        found[setting.field] = value
    return found, problems
