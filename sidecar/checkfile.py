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
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from sidecar.checkspec import CRITICALITIES, NAME_PATTERN, CheckPolicy, CheckSpec, DatabaseTarget
from sidecar.fields import ABSENT, TIMING, Fields, clip, one_line, shown, shown_key
from sidecar.inputs import read_text_file
from sidecar.kinds import NAMES, Kind, every_kind, kind

if TYPE_CHECKING:
    import yaml

ORIGIN: Final = "SIDECAR_CONFIG_FILE"
# A check list is a few kilobytes; anything near this is a wrong mount, not a config.
MAX_CHECK_FILE_BYTES: Final = 1024 * 1024
COMMON_KEYS: Final = ("name", "kind", "criticality", *TIMING)
NAME_RULE: Final = (
    "must be 1 to 63 lowercase letters, digits, '-' or '_', "
    "starting and ending with a letter or digit"
)
_BOOL_TAG: Final = "tag:yaml.org,2002:bool"
_CORE_BOOL: Final = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")


def load_check_file(
    path: str, *, defaults: CheckPolicy, database: DatabaseTarget, problems: list[str]
) -> tuple[CheckSpec, ...]:
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
) -> tuple[CheckSpec, ...]:
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

    specs: list[CheckSpec] = []
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
) -> CheckSpec | None:
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
    kind_name = raw.get("kind", ABSENT)
    if kind_name is ABSENT:
        problems.append(f"{where}: kind: missing; must be one of {', '.join(NAMES)}")
    elif kind_name not in NAMES:
        problems.append(f"{where}: kind: must be one of {', '.join(NAMES)}, got {shown(kind_name)}")
    known = kind(kind_name) if isinstance(kind_name, str) and kind_name in NAMES else None
    _refuse_unknown_keys(fields, known)
    common = {"name": name or "", "policy": fields.policy(policy)}
    criticality = fields.read(
        "criticality",
        lambda v: v in CRITICALITIES,
        f"must be one of {', '.join(CRITICALITIES)}",
        default="critical",
    )
    common["critical"] = criticality == "critical"
    spec = known.parse(fields, common, database) if known else None
    # A spec is only built from a check without a single problem.
    return spec if name is not None and len(problems) == before else None


def _valid_name(raw: object) -> str | None:
    name = raw.get("name") if isinstance(raw, Mapping) else None
    return name if isinstance(name, str) and NAME_PATTERN.fullmatch(name) else None


def _refuse_unknown_keys(fields: Fields, own_kind: Kind[Any] | None) -> None:
    """Unknown keys, and keys of another kind (`url` on a postgres check)."""
    own = (*COMMON_KEYS, *own_kind.key_names) if own_kind else None
    for key in fields.raw:
        if key in COMMON_KEYS or (own is not None and key in own):
            continue
        # Only a key this check's kind does not take loads the other kinds' modules.
        kinds = every_kind()
        owner = next((k.name for k in kinds if key in k.key_names), None)
        if owner is not None:
            if own_kind is not None:  # unknown kind: which keys belong is unknown too
                fields.problems.append(
                    f"{fields.where}: {key}: not {_a(own_kind.name)} setting (it belongs to "
                    f"{_a(owner)} check)"
                )
            continue
        every = (*COMMON_KEYS, *(name for k in kinds for name in k.key_names))
        guess = difflib.get_close_matches(key, own or every, n=1) if isinstance(key, str) else []
        hint = f"; did you mean {guess[0]!r}?" if guess else ""
        if not guess and own_kind is not None and own is not None:
            hint = f"; {_a(own_kind.name)} check takes: {', '.join(sorted(own))}"
        fields.problems.append(f"{fields.where}: unknown key {shown_key(key)}{hint}")


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
        text = read_text_file(path, MAX_CHECK_FILE_BYTES)
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
