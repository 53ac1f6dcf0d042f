"""Typed reads of one mapping of the check file, each refusal one line naming the key.

Shared by the loader (`sidecar.checkfile`) and each kind's own keys (`sidecar.kinds`). A line
quotes a refused value only when it cannot be a secret (names, kinds, numbers, hosts, paths):
a DSN, a URL or a password is described (`kind_of`), never shown.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Final

from sidecar.checkspec import CheckPolicy
from sidecar.inputs import read_head, unprintable, valid_host
from sidecar.options import PER_CHECK, PORT, Setting, Value

# The timing keys of `defaults:` and of each check: the SIDECAR_* settings' own ranges.
TIMING: Final[dict[str, Setting]] = {str(s.file_key): s for s in PER_CHECK}
_SHOWN_CHARS: Final = 40
# A key the mapping does not set (None is a value: YAML's null).
ABSENT: Final = object()


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

    def policy(self, base: CheckPolicy) -> CheckPolicy:
        """`base`, with the timing keys this mapping sets."""
        found: dict[str, Any] = {s.field: self.number(key, s) for key, s in TIMING.items()}
        return replace(base, **{name: value for name, value in found.items() if value is not None})

    def number(self, key: str, rule: Value) -> float | int | None:
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
        value: str | None = self.read(key, is_path, "must be a file path")
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


def is_text(value: object) -> bool:
    return isinstance(value, str)


def is_host(value: object) -> bool:
    return isinstance(value, str) and bool(value) and valid_host(value)


def is_port(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and PORT.in_range(value)


def is_path(value: object) -> bool:
    return (
        isinstance(value, str)
        and bool(value.strip())
        and not unprintable(value, spaces=False)
        and _utf8(value)
    )


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


def number_schema(setting: Value) -> dict[str, Any]:
    """The JSON Schema of a number key, from the declaration the loader reads its range from."""
    schema: dict[str, Any] = {
        "type": "integer" if setting.type == "whole" else "number",
        "description": setting.help[:1].upper() + setting.help[1:],
        "exclusiveMinimum" if setting.above_minimum else "minimum": setting.minimum,
    }
    if setting.maximum != float("inf"):
        schema["maximum"] = setting.maximum
    return schema
