"""Reading the check file: its suffix, a bounded read, then TOML or YAML (a repeated key refused).

Nothing here raises for a bad file: it gives one problem line naming the path, and where the
parser says so the line and column, never the file's content: the lines around an error may
hold a DSN, and the problem lines end up on stderr and in the pod's events.
"""

from __future__ import annotations

import functools
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from sidecar.fields import clip, one_line
from sidecar.inputs import read_text_file

if TYPE_CHECKING:
    import yaml

ORIGIN: Final = "SIDECAR_CONFIG_FILE"
# A check list is a few kilobytes; anything near this is a wrong mount, not a config.
MAX_CHECK_FILE_BYTES: Final = 1024 * 1024
YAML_SUFFIXES: Final = (".yaml", ".yml")
TOML_SUFFIXES: Final = (".toml",)
_BOOL_TAG: Final = "tag:yaml.org,2002:bool"
_CORE_BOOL: Final = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")


class _Unreadable:
    """The document could not be read or parsed (a problem has been appended)."""


UNREADABLE: Final = _Unreadable()


def read_document(path: str, problems: list[str]) -> object:
    suffix = Path(path).suffix.lower()
    if suffix not in (*YAML_SUFFIXES, *TOML_SUFFIXES):
        shown = repr(suffix) if suffix else "no extension"
        problems.append(
            f"{ORIGIN}: file {path!r} has {shown}; name it .yaml, .yml (YAML) or .toml (TOML)"
        )
        return UNREADABLE
    try:
        # utf-8-sig: an editor's byte order mark is not a syntax error.
        text = read_text_file(path, MAX_CHECK_FILE_BYTES, encoding="utf-8-sig")
    except ValueError as exc:
        problems.append(f"{ORIGIN}: file {path!r} {exc}")
        return UNREADABLE
    if suffix in TOML_SUFFIXES:
        return _parse_toml(path, text, problems)
    return _parse_yaml(path, text, problems)


def _parse_toml(path: str, text: str, problems: list[str]) -> object:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # Its message already ends with "(at line L, column C)" and never quotes a value.
        problems.append(f"{ORIGIN}: file {path!r} is not valid TOML: {one_line(str(exc))}")
    except RecursionError:
        problems.append(f"{ORIGIN}: file {path!r} is not usable TOML: nested too deeply")
    except ValueError as exc:  # e.g. an integer beyond Python's digit limit
        problems.append(f"{ORIGIN}: file {path!r} is not usable TOML: {_value_error(exc)}")
    return UNREADABLE


def _parse_yaml(path: str, text: str, problems: list[str]) -> object:
    try:
        import yaml  # noqa: PLC0415 -- only a YAML check file needs it
    except ImportError:
        problems.append(
            f"{ORIGIN}: file {path!r} is YAML, but PyYAML is not installed; use a .toml file"
        )
        return UNREADABLE
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
        reason = one_line(exc.problem or exc.context or "syntax error")
        problems.append(f"{ORIGIN}: file {path!r} is not valid YAML: {where}{reason}")
    except yaml.reader.ReaderError as exc:  # a control character, found by offset
        where = _position(text, exc.position)
        problems.append(
            f"{ORIGIN}: file {path!r} is not valid YAML: {where}: control character "
            f"{clip(chr(exc.character)) if isinstance(exc.character, int) else ''}"
        )
    except yaml.YAMLError as exc:
        problems.append(f"{ORIGIN}: file {path!r} is not valid YAML: {one_line(str(exc))}")
    except RecursionError:
        problems.append(f"{ORIGIN}: file {path!r} is not usable YAML: nested too deeply")
    except (ValueError, TypeError, OverflowError) as exc:  # 2024-13-45, a 5000-digit integer
        problems.append(f"{ORIGIN}: file {path!r} is not usable YAML: {_value_error(exc)}")
    return UNREADABLE


def _position(text: str, offset: int) -> str:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return f"line {line}, column {column}"


def _value_error(exc: Exception) -> str:
    if "integer string conversion" in str(exc):
        # Python's own message suggests sys.set_int_max_str_digits(), no help to a reader.
        return "an integer has too many digits"
    return one_line(str(exc))


@functools.cache
def _unique_key_loader() -> type[yaml.SafeLoader]:
    """yaml.SafeLoader, but a key repeated in one mapping is an error: PyYAML silently keeps
    the last one, so `name: a` ... `name: b` would drop a setting without a word."""
    import yaml  # noqa: PLC0415 -- see _parse_yaml

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
