"""The check file's JSON Schema, generated: `python -m sidecar.schema` prints it.

Made from the registry (each kind's keys, their schemas, the rules between them, and what only
the loader can refuse) and the settings declarations (the timing keys' types and ranges), which
the loader reads too. docs/check-file.schema.json is this output, and the app chart's `check`
and `checkDefaults` definitions are copies of two parts of it: `.ci/schema` writes them, and
tests/test_check_schema.py fails when a committed copy differs.
"""

from __future__ import annotations

import json
from typing import Any, Final

from sidecar.checkspec import CRITICALITIES, NAME_PATTERN
from sidecar.fields import TIMING, number_schema
from sidecar.kinds import NAMES, every_kind

TITLE: Final = "health-sidecar check file (SIDECAR_CONFIG_FILE)"
# Refusals of the loader that no kind owns, around the kinds' own (Kind.loader_only).
FIRST_REFUSALS: Final = ("a name used twice",)
LAST_REFUSALS: Final = (
    "a number that is not finite (YAML's .inf, .nan)",
    "and, in YAML, a boolean other than true/false (yes, no, on, off are text)",
)


def check_file_schema() -> dict[str, Any]:
    """The whole schema, as a JSON-ready mapping."""
    kinds = every_kind()
    timing = {key: number_schema(setting) for key, setting in TIMING.items()}
    common: dict[str, Any] = {
        "name": {
            "type": "string",
            "description": "Check name: /ready/<name>, metric label check",
            "pattern": NAME_PATTERN.pattern,
        },
        "kind": {"type": "string", "enum": list(NAMES)},
        "criticality": {
            "type": "string",
            "enum": list(CRITICALITIES),
            "description": "critical fails /ready; warn shows warn, /ready stays 200",
        },
        **timing,
    }
    properties = dict(common)
    for kind in kinds:
        properties.update({key.name: dict(key.schema) for key in kind.keys})
    per_kind = []
    for kind in kinds:
        then: dict[str, Any] = {"propertyNames": {"enum": [*common, *kind.key_names]}}
        required = [key.name for key in kind.keys if key.required]
        if required:
            then["required"] = required
        this_kind = {"properties": {"kind": {"const": kind.name}}, "required": ["kind"]}
        per_kind.append({"if": this_kind, "then": then})
    refusals = [*FIRST_REFUSALS, *(phrase for kind in kinds for phrase in kind.loader_only)]
    description = (
        "One check of the check file. The loader also refuses what this schema cannot say: "
        + "; ".join([*refusals, *LAST_REFUSALS])
        + "."
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": TITLE,
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "defaults": {"$ref": "#/$defs/defaults"},
            "checks": {
                "type": "array",
                "description": "The checks to run, at least one",
                "minItems": 1,
                "items": {"$ref": "#/$defs/check"},
            },
        },
        "required": ["checks"],
        "$defs": {
            "defaults": {
                "type": "object",
                "description": (
                    "defaults: of the check file: each key falls back to its SIDECAR_* "
                    "setting, then the built-in default"
                ),
                "additionalProperties": False,
                "properties": timing,
            },
            "check": {
                "type": "object",
                "description": description,
                "additionalProperties": False,
                "properties": properties,
                "required": ["name", "kind"],
                "allOf": [*per_kind, *(dict(rule) for kind in kinds for rule in kind.rules)],
            },
        },
    }


def chart_copy(definition: dict[str, Any]) -> dict[str, Any]:
    """A definition as the app chart's values.schema.json holds it. Helm's schema errors quote a
    string that fails a `pattern` ("'mysql://u:pw@db/app' does not match ..."), so a property
    marked `writeOnly` (its value may be a secret) keeps no pattern of its own there; the library
    chart's render-time validation, which never quotes a value, applies it."""
    copy: dict[str, Any] = json.loads(json.dumps(definition))
    for schema in copy.get("properties", {}).values():
        if schema.get("writeOnly"):
            schema.pop("pattern", None)
    return copy


def text() -> str:
    """The schema as committed: two-space indents, a final newline."""
    return json.dumps(check_file_schema(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    print(text(), end="")
