"""docs/check-file.schema.json: derived facts, the chart's copy, and agreement with the loader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from support import REPO
from test_checkfile import (
    EXAMPLES,
    REFUSALS,
    parse,
    read_example,
    with_check,
    with_local_files,
)

from sidecar.checkfile import COMMON_KEYS
from sidecar.checkspec import CRITICALITIES, NAME_PATTERN
from sidecar.fields import TIMING
from sidecar.kinds import NAMES, every_kind
from sidecar.schema import chart_copy, check_file_schema, text

KIND_KEYS = {kind.name: kind.key_names for kind in every_kind()}

SCHEMA = json.loads((REPO / "docs" / "check-file.schema.json").read_text())
CHART = json.loads((REPO / "charts" / "health-sidecar" / "values.schema.json").read_text())
VALIDATOR = Draft202012Validator(SCHEMA)

# Refusals only the loader can make, each named in the schema's description of a check.
LOADER_ONLY = {
    "interval not finite",
    "expect_status reversed",
    "host with an empty label",
    "ca_file missing",
    "dsn_file missing",
}


def schema_accepts(document: object) -> bool:
    return VALIDATOR.is_valid(document)


def test_committed_schema_is_the_generated_one() -> None:
    """docs/check-file.schema.json is `python -m sidecar.schema`'s output, byte for byte
    (after a change of a kind or a timing setting, run .ci/check-file-schema)."""
    assert (REPO / "docs" / "check-file.schema.json").read_text() == text()


def test_chart_copies_are_the_generated_ones() -> None:
    """The app chart's `check` and `checkDefaults` definitions are the generated schema's."""
    generated = check_file_schema()["$defs"]
    assert CHART["definitions"]["check"] == chart_copy(generated["check"])
    assert CHART["definitions"]["checkDefaults"] == chart_copy(generated["defaults"])


def test_schema_is_valid_2020_12() -> None:
    """The schema itself is a valid JSON Schema 2020-12 document."""
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(SCHEMA)


def test_schema_states_the_declared_keys_kinds_and_ranges() -> None:
    """Every key, kind, criticality, name pattern, timing range and per-kind key set is the
    loader's (sidecar.options through sidecar.checkfile)."""
    check, defaults = SCHEMA["$defs"]["check"], SCHEMA["$defs"]["defaults"]
    properties = check["properties"]
    assert sorted(properties) == sorted(
        {*COMMON_KEYS, *(k for ks in KIND_KEYS.values() for k in ks)}
    )
    assert properties["kind"]["enum"] == list(NAMES)
    assert properties["criticality"]["enum"] == list(CRITICALITIES)
    assert properties["name"]["pattern"] == NAME_PATTERN.pattern
    assert sorted(defaults["properties"]) == sorted(TIMING)
    for key, setting in TIMING.items():
        for where in (properties[key], defaults["properties"][key]):
            assert where["type"] == ("integer" if setting.type == "whole" else "number"), key
            bound = "exclusiveMinimum" if setting.above_minimum else "minimum"
            assert where[bound] == setting.minimum, key
            assert where["maximum"] == setting.maximum, key
    per_kind = {
        rule["if"]["properties"]["kind"]["const"]: sorted(rule["then"]["propertyNames"]["enum"])
        for rule in check["allOf"]
        if "kind" in rule.get("if", {}).get("properties", {})
    }
    assert per_kind == {kind: sorted([*COMMON_KEYS, *keys]) for kind, keys in KIND_KEYS.items()}


def test_chart_uses_the_same_schema_for_checks_and_check_defaults() -> None:
    """The chart's `check` and `checkDefaults` are the schema's, key for key, but for the
    pattern of a writeOnly key (Helm's error would quote a password); its `checks` list may be
    empty (the one postgres check) where a check file's may not."""
    assert CHART["definitions"]["check"] == chart_copy(SCHEMA["$defs"]["check"])
    secret_bearing = [
        key
        for key, schema in SCHEMA["$defs"]["check"]["properties"].items()
        if schema.get("writeOnly")
    ]
    assert sorted(secret_bearing) == ["dsn", "url"]
    for key in secret_bearing:
        assert "pattern" not in CHART["definitions"]["check"]["properties"][key], key
    assert CHART["definitions"]["checkDefaults"] == SCHEMA["$defs"]["defaults"]
    assert CHART["properties"]["checks"]["items"] == {"$ref": "#/definitions/check"}
    assert "minItems" not in CHART["properties"]["checks"]
    assert SCHEMA["properties"]["checks"]["minItems"] == 1


def test_loader_only_rules_are_listed_in_the_schema() -> None:
    """What the schema cannot say is said in its description, for the reader of the schema."""
    description = SCHEMA["$defs"]["check"]["description"]
    for words in ("used twice", "cannot be read", "empty or 64+", "starts above", "not finite"):
        assert words in description
    assert "true/false" in description
    assert {name for name, _, _ in REFUSALS} >= LOADER_ONLY


@pytest.mark.parametrize("name", ["checks.yaml", "checks.toml"])
def test_examples_are_valid_for_schema_and_loader(name: str, tmp_path: Path) -> None:
    """The documented examples pass both (the loader with its mounted files made local)."""
    document = read_example(EXAMPLES / name)
    assert schema_accepts(document)
    files = {}
    for key in ("dsn", "ca", "crt", "key"):
        path = tmp_path / key
        path.write_text("postgresql://app@db/app\n" if key == "dsn" else "placeholder\n")
        files[key] = str(path)
    local, _ = with_local_files(document, files)
    assert parse(local)[1] == []


BAD_DOCUMENTS: list[tuple[str, Any]] = [
    ("empty", None),
    ("no checks", {"defaults": {}}),
    ("empty check list", {"checks": []}),
    ("checks not a list", {"checks": {"name": "a"}}),
    ("unknown top key", {"checks": [{"name": "a", "kind": "tcp", "host": "h", "port": 1}], "x": 1}),
    ("unknown defaults key", {"defaults": {"interval": 5}, "checks": []}),
    ("defaults out of range", {"defaults": {"timeout_seconds": 601}, "checks": []}),
    ("defaults threshold a float", {"defaults": {"failure_threshold": 1.5}, "checks": []}),
]


@pytest.mark.parametrize("document", [pytest.param(doc, id=name) for name, doc in BAD_DOCUMENTS])
def test_bad_documents_are_refused_by_both(document: Any) -> None:
    """A bad document shape is refused by the schema and by the loader alike."""
    assert not schema_accepts(document)
    assert parse(document)[1] != []


@pytest.mark.parametrize(
    ("name", "check"), [pytest.param(name, check, id=name) for name, check, _ in REFUSALS]
)
def test_schema_and_loader_agree_on_every_refused_check(name: str, check: Any) -> None:
    """Every check the loader refuses (test_checkfile's list) the schema refuses too, except
    the few rules only a loader can check, which the schema's description lists."""
    assert parse(with_check(check))[1] != []
    assert schema_accepts(with_check(check)) is (name in LOADER_ONLY)
