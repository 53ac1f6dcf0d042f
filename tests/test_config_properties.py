"""Property-based: every combination of settings either starts or is refused (exit 2) with one
line per bad variable naming it; never a traceback, never a hang.

Each variable's value is drawn as good, bad, or arbitrary text, with the classification made
here, independently of sidecar/config.py (an oracle built from the contract's ranges). The bulk
runs `Settings.from_environ` in-process; a few examples go through the real CLI (`python -m
sidecar`, the `health-sidecar` entry point) with a timeout: refused ones must exit 2 with the
same lines, accepted ones must start listening and stop cleanly on SIGTERM.

Values never hold NUL: neither an environment variable nor an argument can carry one.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import pytest
import yaml
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from sidecar_proc import SidecarProcess
from support import SLACK, examples, free_port

from sidecar.checkfile import COMMON_KEYS, load_check_file, parse_checks
from sidecar.checks.http import HttpSpec
from sidecar.checks.tcp import TcpSpec
from sidecar.checkspec import CheckPolicy, CheckSpec, DatabaseTarget
from sidecar.config import ConfigError, Settings
from sidecar.kinds import every_kind

OK: Final = "ok"
BAD: Final = "bad"
ANY: Final = "any"  # arbitrary text: either verdict is allowed, but only about this variable

NUMBERS: Final = {
    # name: (minimum, maximum, minimum allowed?)
    "SIDECAR_CHECK_INTERVAL": (0.0, 3600.0, False),
    "SIDECAR_CHECK_TIMEOUT": (0.0, 600.0, False),
    "SIDECAR_BACKOFF_MAX": (0.0, 3600.0, False),
    "SIDECAR_DRAIN_SECONDS": (0.0, 3600.0, True),
}
INTEGERS: Final = {
    "SIDECAR_FAILURE_THRESHOLD": (1, 1000),
    "SIDECAR_SUCCESS_THRESHOLD": (1, 1000),
    "SIDECAR_PORT": (1, 65535),
}
CHOICES: Final = {
    "SIDECAR_LOG_LEVEL": ("debug", "info", "warning", "error", "critical"),
    "SIDECAR_LOG_FORMAT": ("json", "console"),
}
KNOWN: Final = {
    *NUMBERS,
    *INTEGERS,
    *CHOICES,
    "SIDECAR_HOST",
    "SIDECAR_DATABASE_URL",
    "SIDECAR_DATABASE_URL_FILE",
    "PGPORT",
}

Tagged = tuple[str, str]  # (OK | BAD | ANY, text)

# Unicode text without NUL or surrogates (an environment cannot hold either as given).
TEXT = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=30)
PAD = st.sampled_from(["", " ", "\t", "  ", "\n"])


def padded(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Surrounding whitespace is stripped by the sidecar: it never changes the verdict."""
    return st.tuples(PAD, inner, PAD).map("".join)


def tag(kind: str, inner: st.SearchStrategy[str]) -> st.SearchStrategy[Tagged]:
    return padded(inner).map(lambda text: (kind, text))


def number(name: str) -> st.SearchStrategy[Tagged]:
    low, high, inclusive = NUMBERS[name]

    def verdict(value: float) -> str:
        above = value >= low if inclusive else value > low
        return OK if math.isfinite(value) and above and value <= high else BAD

    values = st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.floats(min_value=low, max_value=high),
        st.integers(-10, int(high) + 10).map(float),
        st.sampled_from([0.0, -0.0, high, 5e-324, 1e-9, math.nextafter(high, math.inf)]),
    )
    as_text = values.flatmap(
        lambda v: st.sampled_from(
            [repr(v), str(int(v)) if math.isfinite(v) and v == int(v) else repr(v)]
        ).map(lambda text: (verdict(v), text))
    )
    words = st.from_regex(r"[a-df-hj-mo-z]{1,8}s?", fullmatch=True)  # no inf/nan/e: never a float
    return st.one_of(
        as_text.flatmap(lambda pair: tag(pair[0], st.just(pair[1]))),
        tag(BAD, words),
        tag(BAD, st.sampled_from(["1,5", "5s", "1/2", "0x10", "--1", "1e", "."])),
        tag(ANY, TEXT),
    )


def good_number(name: str) -> st.SearchStrategy[str]:
    low, high, inclusive = NUMBERS[name]
    return padded(st.floats(low, high, exclude_min=not inclusive).map(repr))


def good_integer(name: str) -> st.SearchStrategy[str]:
    return padded(st.integers(*INTEGERS[name]).map(str))


def good_choice(name: str) -> st.SearchStrategy[str]:
    cased = st.tuples(st.sampled_from(CHOICES[name]), st.sampled_from([str.lower, str.upper]))
    return padded(cased.map(lambda pair: pair[1](pair[0])))


def integer(name: str) -> st.SearchStrategy[Tagged]:
    low, high = INTEGERS[name]
    return st.one_of(
        tag(OK, st.integers(low, high).map(str)),
        tag(OK, st.integers(low, high).map(lambda i: f"+{i}")),
        tag(BAD, st.integers(max_value=low - 1).map(str)),
        tag(BAD, st.integers(min_value=high + 1).map(str)),
        tag(BAD, st.sampled_from(["1.0", "1e3", "0x10", "http", "8081s", "9" * 5000, "½"])),
        tag(ANY, TEXT),
    )


def choice(name: str) -> st.SearchStrategy[Tagged]:
    allowed = CHOICES[name]
    cased = st.tuples(st.sampled_from(allowed), st.sampled_from([str.lower, str.upper, str.title]))
    return st.one_of(
        tag(OK, cased.map(lambda pair: pair[1](pair[0]))),
        tag(BAD, st.from_regex(r"[a-z]{1,10}", fullmatch=True).filter(lambda w: w not in allowed)),
        tag(ANY, TEXT),
    )


LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
HOSTNAME = st.lists(LABEL, min_size=1, max_size=4).map(".".join)


def host() -> st.SearchStrategy[Tagged]:
    return st.one_of(
        tag(OK, st.ip_addresses(v=4).map(str)),
        tag(OK, st.sampled_from(["::1", "0.0.0.0", "::", "localhost"])),  # noqa: S104 -- a value
        tag(OK, HOSTNAME),
        # Whitespace, a slash, a control character (the server would fail at bind time, exit 1).
        tag(
            BAD,
            st.tuples(HOSTNAME, st.sampled_from([" ", "\t", "/", "\x01", "\x7f"]), HOSTNAME).map(
                "".join
            ),
        ),
        tag(BAD, st.tuples(HOSTNAME, HOSTNAME).map(lambda p: f"{p[0]}..{p[1]}")),  # empty label
        tag(BAD, st.integers(64, 100).map(lambda n: "a" * n + ".example")),  # label too long
        tag(ANY, TEXT),
    )


def pgport() -> st.SearchStrategy[Tagged]:
    return st.one_of(
        tag(OK, st.integers(1, 65535).map(str)),
        tag(BAD, st.sampled_from(["0", "65536", "-1", "pg", "5432.0", "0x1538"])),
        tag(ANY, TEXT),
    )


PASSWORDS = st.text(st.characters(blacklist_categories=["Cs"]), max_size=12)


def good_dsn() -> st.SearchStrategy[str]:
    scheme = st.sampled_from(["postgresql", "postgres", "PostgreSQL", "POSTGRES"])
    auth = st.one_of(
        st.just(""),
        st.tuples(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), PASSWORDS).map(
            lambda p: f"{p[0]}:{quote(p[1], safe='')}@"
        ),
    )
    where = st.one_of(HOSTNAME, st.ip_addresses(v=4).map(str), st.just("[::1]"))
    port = st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}"))
    database = st.one_of(st.just(""), TEXT.map(lambda d: "/" + quote(d, safe="")))
    query = st.sampled_from(["", "?sslmode=disable", "?application_name=x&connect_timeout=5"])
    return st.tuples(scheme, auth, where, port, database, query).map(
        lambda p: f"{p[0]}://{p[1]}{p[2]}{p[3]}{p[4]}{p[5]}"
    )


def bad_dsn() -> st.SearchStrategy[str]:
    return st.one_of(
        good_dsn().map(lambda d: "mysql" + d[d.index(":") :]),  # another scheme
        good_dsn().map(lambda d: d[d.index("://") + 3 :] or "host"),  # no scheme at all
        st.tuples(good_dsn(), st.sampled_from([" ", "\t", "\x01", "\x1f"])).map(
            lambda p: p[0] + p[1] + "x"
        ),  # whitespace or a control character inside
        st.sampled_from(["h:port", "h:99999", "h:-1", "[::1"]).map(
            lambda h: f"postgresql://u@{h}/db"
        ),
    )


def url() -> st.SearchStrategy[Tagged]:
    return st.one_of(tag(OK, good_dsn()), tag(BAD, bad_dsn()), tag(ANY, TEXT))


@dataclass(frozen=True)
class DsnFiles:
    """Files for SIDECAR_DATABASE_URL_FILE, made once: name -> (verdict, path)."""

    paths: dict[str, tuple[str, str]]


def make_dsn_files(directory: Path) -> DsnFiles:
    files: dict[str, tuple[str, str | bytes]] = {
        "good": (OK, "postgresql://u:p%40ss@db.example:5432/app\n"),
        # Loopback, port 1 (nothing listens): the CLI examples start with it, connecting nowhere.
        "good, spaces around": (OK, "  postgres://127.0.0.1:1/app  \n\n"),
        "empty": (BAD, ""),
        "blank": (BAD, " \n\t\n"),
        "not UTF-8": (BAD, b"postgresql://u:\xff\xfe@h/db"),
        "too big": (BAD, "postgresql://h/db?x=" + "a" * (70 * 1024)),
        "another scheme": (BAD, "mysql://u:p@h/db"),
        "two lines": (BAD, "postgresql://h/db\npostgresql://h/other\n"),
    }
    paths: dict[str, tuple[str, str]] = {}
    for n, (name, (verdict, content)) in enumerate(files.items()):
        path = directory / f"dsn-{n}"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        paths[name] = (verdict, str(path))
    paths["missing"] = (BAD, str(directory / "no-such-file"))
    paths["a directory"] = (BAD, str(directory))
    return DsnFiles(paths)


_FILES_DIR = Path(tempfile.mkdtemp(prefix="config-properties-"))
FILES = make_dsn_files(_FILES_DIR)


def url_file() -> st.SearchStrategy[Tagged]:
    return st.sampled_from(sorted(FILES.paths.values()))


VARIABLES: dict[str, st.SearchStrategy[Tagged]] = {
    **{name: number(name) for name in NUMBERS},
    **{name: integer(name) for name in INTEGERS},
    **{name: choice(name) for name in CHOICES},
    "SIDECAR_HOST": host(),
    "SIDECAR_DATABASE_URL": url(),
    "SIDECAR_DATABASE_URL_FILE": url_file(),
    "PGPORT": pgport(),
}
ABSENT = st.one_of(st.none(), st.just((OK, "")), st.just((OK, "   ")))  # blank = not set


@st.composite
def environments(draw: st.DrawFn) -> dict[str, Tagged]:
    env: dict[str, Tagged] = {}
    for name, strategy in VARIABLES.items():
        # Most variables unset most of the time, so that one bad value is often alone.
        value = draw(st.one_of(ABSENT, ABSENT, strategy))
        if value is not None:
            env[name] = value
    for name in ("PGHOST", "PGUSER", "PGPASSWORD", "PGDATABASE"):
        if draw(st.booleans()):
            env[name] = (ANY, draw(TEXT))
    return env


def expected(env: dict[str, Tagged]) -> tuple[set[str], set[str]]:
    """(variables that must be named, variables that must not be) by the contract."""
    must, must_not = set(), set()

    def judge(name: str) -> None:
        verdict = env[name][0]
        if verdict == BAD:
            must.add(name)
        elif verdict == OK:
            must_not.add(name)

    def present(name: str) -> bool:
        return name in env and env[name][1].strip() != ""

    for name in (*NUMBERS, *INTEGERS, *CHOICES, "SIDECAR_HOST"):
        if name in env:
            judge(name)
    # The database target: the URL and the URL file exclude each other; PGPORT is judged
    # whatever the DSN (asyncpg reads it as the default port even beside a DSN); a variable
    # that is not read is never named.
    if "PGPORT" in env:
        judge("PGPORT")
    if present("SIDECAR_DATABASE_URL") and present("SIDECAR_DATABASE_URL_FILE"):
        must.add("SIDECAR_DATABASE_URL_FILE")
        must_not.add("SIDECAR_DATABASE_URL")
    elif present("SIDECAR_DATABASE_URL"):
        judge("SIDECAR_DATABASE_URL")
        must_not.add("SIDECAR_DATABASE_URL_FILE")
    elif present("SIDECAR_DATABASE_URL_FILE"):
        judge("SIDECAR_DATABASE_URL_FILE")
        must_not.add("SIDECAR_DATABASE_URL")
    else:
        must_not.add("SIDECAR_DATABASE_URL_FILE")
        # No database at all: one line, under the first of the ways to give one.
        (must if not present("PGHOST") else must_not).add("SIDECAR_DATABASE_URL")
    return must, must_not


def plain(env: dict[str, Tagged]) -> dict[str, str]:
    return {name: text for name, (_, text) in env.items()}


def named_in(problems: list[str]) -> list[str]:
    return [problem.partition(":")[0] for problem in problems]


def verdict_of(env: dict[str, str]) -> Settings | list[str]:
    """Settings, or the problem lines; anything else escaping is the bug we look for."""
    try:
        return Settings.from_environ(env)
    except ConfigError as error:
        return error.problems


# ---- in-process: the bulk --------------------------------------------------------------------


@settings(max_examples=examples(1000), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(environments())
@example({"SIDECAR_HOST": (BAD, "a..b")})  # an empty label: a traceback at bind time before
@example({"SIDECAR_HOST": (BAD, "a" * 64)})  # a label too long: the same
@example({"SIDECAR_CHECK_INTERVAL": (BAD, "nan"), "SIDECAR_PORT": (BAD, "0")})
def test_every_setting_combination_is_accepted_or_refused_by_name(
    env: dict[str, Tagged],
) -> None:
    """Any settings: accepted, or refused with one line naming each bad variable, only those."""
    result = verdict_of(plain(env))
    must, must_not = expected(env)
    if isinstance(result, Settings):
        assert not must, f"accepted although {must} are bad"
        check_values(result, env)
        return
    names = named_in(result)
    for problem in result:
        assert len(problem.splitlines()) == 1, problem
    assert set(names) <= KNOWN, result
    assert len(names) == len(set(names)), f"a variable named twice: {result}"
    assert must <= set(names), f"{must - set(names)} not named in {result}"
    assert not must_not & set(names), f"good {must_not & set(names)} named in {result}"


def check_values(accepted: Settings, env: dict[str, Tagged]) -> None:
    """What was accepted is what was given (or the default when not given)."""
    text = {name: value.strip() for name, (_, value) in env.items() if value.strip()}
    defaults = Settings()
    assert accepted.policy.interval == float(
        text.get("SIDECAR_CHECK_INTERVAL", defaults.policy.interval)
    )
    assert accepted.port == int(text.get("SIDECAR_PORT", defaults.port))
    assert accepted.log_level == text.get("SIDECAR_LOG_LEVEL", defaults.log_level).lower()
    assert accepted.policy.timeout > 0
    assert accepted.policy.interval > 0
    assert accepted.policy.backoff_max > 0
    assert accepted.drain_seconds >= 0
    assert 1 <= accepted.policy.failure_threshold <= 1000
    assert math.isfinite(accepted.policy.freshness_seconds)


# ---- the real CLI: a handful ---------------------------------------------------------------------


def cli_environment(env: dict[str, str]) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}


@pytest.mark.slow
@settings(
    max_examples=examples(15),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    # Each example is a process: report the failing one as found, do not spend minutes shrinking.
    phases=[Phase.explicit, Phase.generate],
)
@given(environments().filter(lambda env: bool(expected(env)[0])))
@example({"SIDECAR_HOST": (BAD, "a..b")})  # was a UnicodeError traceback from the resolver, exit 1
def test_refused_combinations_exit_2_through_the_cli(env: dict[str, Tagged]) -> None:
    """Through the CLI, refused settings exit 2 with those lines, no traceback, no hang."""
    values = plain(env)
    problems = verdict_of(values)
    assert isinstance(problems, list)
    result = subprocess.run(
        [sys.executable, "-m", "sidecar"],
        env=cli_environment(values),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines == [f"health-sidecar: bad setting: {problem}" for problem in problems]


@st.composite
def startable(draw: st.DrawFn) -> dict[str, str]:
    """Good values for everything but where to listen (a free loopback port) and the drain
    (short, so that stopping is quick)."""
    env: dict[str, str] = {}
    for name in ("SIDECAR_CHECK_INTERVAL", "SIDECAR_CHECK_TIMEOUT", "SIDECAR_BACKOFF_MAX"):
        env[name] = draw(good_number(name))
    for name in ("SIDECAR_FAILURE_THRESHOLD", "SIDECAR_SUCCESS_THRESHOLD"):
        env[name] = draw(good_integer(name))
    for name in CHOICES:
        env[name] = draw(good_choice(name))
    source = draw(st.sampled_from(["url", "file", "libpq"]))
    if source == "url":
        # Loopback port 1, where nothing listens: the check fails, the sidecar serves anyway.
        dsn = draw(good_dsn())
        scheme, _, rest = dsn.partition("://")
        auth = rest.rpartition("@")[0] + "@" if "@" in rest else ""
        env["SIDECAR_DATABASE_URL"] = f"{scheme}://{auth}127.0.0.1:1/db"
    elif source == "file":
        env["SIDECAR_DATABASE_URL_FILE"] = FILES.paths["good, spaces around"][1]
    else:
        env.update({"PGHOST": "127.0.0.1", "PGPORT": "1", "PGPASSWORD": draw(TEXT) or "x"})
    env["SIDECAR_DRAIN_SECONDS"] = "0"
    return env


@pytest.fixture(scope="module")
def logs_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="config-cli-") as directory:
        yield Path(directory)


@pytest.mark.slow
@settings(
    max_examples=examples(5),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.generate],
)
@given(env=startable())
def test_accepted_combinations_start_and_stop_through_the_cli(
    env: dict[str, str], logs_dir: Path
) -> None:
    """Through the CLI, accepted settings start listening, answer, and exit 0 on SIGTERM."""
    assert isinstance(verdict_of(env), Settings)
    sidecar = SidecarProcess(
        env, defaults={}, port=free_port(), log_dir=logs_dir, name=f"sidecar-{uuid.uuid4().hex}"
    )
    with sidecar:
        sidecar.wait_listening(timeout=SLACK)
        assert sidecar.get("/health").status == 200
    assert sidecar.returncode() == 0, sidecar.tail()
    assert "Traceback" not in sidecar.log_text()


# ---- the check file (SIDECAR_CONFIG_FILE) --------------------------------------------------------
#
# Documents are drawn as a parser could hand them over (mappings, lists, scalars of YAML's and
# TOML's types), mostly near a good check file so that the rules, not only the shape checks,
# are reached. Each drawn value is tagged OK, BAD or ANY for its key as above; a BAD one must
# get the document refused with a line naming its check.

CHECK_FILE: Final = "SIDECAR_CONFIG_FILE"
FILE_SECRET: Final = "s3cret-never-shown"
_GOOD_DSN_FILE = _FILES_DIR / "check-dsn"
_GOOD_DSN_FILE.write_text(f"postgresql://app:{FILE_SECRET}@127.0.0.1:1/app\n")
_TLS_FILE = _FILES_DIR / "tls.pem"
_TLS_FILE.write_text("-----BEGIN CERTIFICATE-----\n")

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
    st.dates(),
)
ANY_VALUE = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)


def tagged(kind: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[str, Any]]:
    return values.map(lambda value: (kind, value))


def timing(key: str) -> st.SearchStrategy[tuple[str, Any]]:
    low, high, whole = {
        "interval_seconds": (0.0, 3600.0, False),
        "timeout_seconds": (0.0, 600.0, False),
        "backoff_max_seconds": (0.0, 3600.0, False),
        "failure_threshold": (1, 1000, True),
        "success_threshold": (1, 1000, True),
    }[key]
    if whole:
        good: st.SearchStrategy[Any] = st.integers(int(low), int(high))
        bad: st.SearchStrategy[Any] = st.one_of(
            st.integers(max_value=int(low) - 1),
            st.integers(min_value=int(high) + 1),
            st.floats(low, high).filter(lambda f: f != int(f)),
        )
    else:
        good = st.one_of(st.floats(low, high, exclude_min=True), st.integers(1, int(high)))
        bad = st.one_of(
            st.floats(max_value=low),
            st.floats(min_value=high, exclude_min=True),
            st.sampled_from([math.nan, math.inf, -math.inf]),
        )
    quoted = st.integers(1, 9).map(str)  # "5": a number only in quotes
    return st.one_of(
        tagged(OK, good),
        tagged(BAD, st.one_of(bad, quoted, st.booleans())),
        tagged(ANY, ANY_VALUE),
    )


def file_values(key: str) -> st.SearchStrategy[tuple[str, Any]]:
    """Values for one key of a check: good, bad, or anything."""
    if key in ("interval_seconds", "timeout_seconds", "backoff_max_seconds") or key.endswith(
        "_threshold"
    ):
        return timing(key)
    good: dict[str, st.SearchStrategy[Any]] = {
        "criticality": st.sampled_from(["critical", "warn"]),
        "dsn": st.sampled_from(["postgresql://app@127.0.0.1:1/app", "postgres://h/db"]),
        "dsn_file": st.just(str(_GOOD_DSN_FILE)),
        "require_primary": st.booleans(),
        "allow_replica": st.booleans(),
        "max_replica_lag_seconds": st.floats(0.001, 86400),
        "alembic_revision": st.one_of(LABEL, st.lists(LABEL, min_size=1, max_size=3)),
        "query": st.just("SELECT 1"),
        "expect": st.sampled_from(["1", "true", ""]),
        "ca_file": st.just(str(_TLS_FILE)),
        "cert_file": st.just(str(_TLS_FILE)),
        "key_file": st.just(str(_TLS_FILE)),
        "url": st.sampled_from(["http://127.0.0.1:1/livez", "https://app.example/"]),
        "expect_status": st.one_of(st.integers(100, 599), st.just("200-399")),
        "host": st.one_of(HOSTNAME, st.ip_addresses(v=4).map(str)),
        "port": st.integers(1, 65535),
    }
    bad: dict[str, st.SearchStrategy[Any]] = {
        "criticality": st.sampled_from(["fatal", "CRITICAL", ""]),
        "dsn": st.sampled_from(
            [
                f"postgresql://app:{FILE_SECRET}@h/db",
                f"postgresql://h/db?password={FILE_SECRET}",
                f"mysql://app:{FILE_SECRET}@h/db",
            ]
        ),
        "dsn_file": st.sampled_from(
            [str(_FILES_DIR / "no-such-dsn"), f"postgresql://u:{FILE_SECRET}@h/db", ""]
        ),
        "require_primary": st.sampled_from(["true", 1, None]),
        "allow_replica": st.sampled_from(["yes", 0]),
        "max_replica_lag_seconds": st.sampled_from([0, -1, "30", math.nan, 86401]),
        "alembic_revision": st.sampled_from([123456, [], [""], ["a b"], None]),
        "query": st.sampled_from(["", "  ", 1, ["SELECT 1"]]),
        "expect": st.sampled_from([True, 1, None]),
        "ca_file": st.just(str(_FILES_DIR / "no-such-ca")),
        "cert_file": st.just(str(_FILES_DIR)),
        "key_file": st.just(""),
        "url": st.sampled_from(
            [
                f"http://u:{FILE_SECRET}@127.0.0.1/",
                "ftp://h/",
                "http:///x",
                "http://h:port/",
                f"http://h/{FILE_SECRET} x",
                "",
            ]
        ),
        "expect_status": st.sampled_from([99, 600, "399-200", "2xx", True, 200.0]),
        "host": st.sampled_from(["", "a b", "a..b", "a" * 64, "x/y", 5]),
        "port": st.sampled_from([0, 65536, "6379", True, 1.0]),
    }
    return st.one_of(tagged(OK, good[key]), tagged(BAD, bad[key]), tagged(ANY, ANY_VALUE))


# Every key a check may carry, from the loader's own tables (a new key must get strategies below).
CHECK_KEYS: Final = (
    *(key for key in COMMON_KEYS if key not in ("name", "kind")),
    *(key for kind in every_kind() for key in kind.key_names),
)
KIND_OF_KEY: Final = {key: kind.name for kind in every_kind() for key in kind.key_names}
CHECK_NAME = st.from_regex(r"[a-z0-9]([a-z0-9_-]{0,10}[a-z0-9])?", fullmatch=True)


@dataclass(frozen=True)
class DrawnFile:
    document: object
    bad_checks: frozenset[int]  # indexes of checks that hold a BAD value judged by their kind


@st.composite
def near_check(draw: st.DrawFn, index: int, bad: set[int]) -> object:
    """A check mapping: a good name and kind, mostly the kind's own keys, tagged values."""
    kind = draw(st.sampled_from(["postgres", "http", "tcp"]))
    check: dict[object, object] = {"name": draw(CHECK_NAME), "kind": kind}
    own = [k for k in CHECK_KEYS if KIND_OF_KEY.get(k, kind) == kind]
    keys = draw(st.lists(st.sampled_from(own), max_size=5, unique=True))
    for key in keys:
        verdict, value = draw(file_values(key))
        check[key] = value
        if verdict == BAD:
            bad.add(index)
    if draw(st.integers(0, 9)) == 0:  # now and then: another kind's key, an unknown key, junk
        extra = draw(st.sampled_from([*CHECK_KEYS, "urll", "dsn_url"]))
        check.setdefault(extra, draw(ANY_VALUE))  # never over a BAD value drawn above
    return check


@st.composite
def check_documents(draw: st.DrawFn) -> DrawnFile:
    bad: set[int] = set()
    shape = draw(st.integers(0, 9))
    if shape == 0:  # anything at all
        return DrawnFile(draw(ANY_VALUE), frozenset())
    count = draw(st.integers(0 if shape == 1 else 1, 4))
    checks = [
        draw(near_check(i, bad)) if draw(st.integers(0, 9)) else draw(ANY_VALUE)
        for i in range(count)
    ]
    document: dict[object, object] = {"checks": checks}
    if draw(st.booleans()):
        defaults: dict[object, object] = {}
        for key in draw(st.lists(st.sampled_from(CHECK_KEYS[1:6]), max_size=3, unique=True)):
            verdict, defaults[key] = draw(timing(key))
            if verdict == BAD:
                bad.add(-1)
        document["defaults"] = defaults
    return DrawnFile(document, frozenset(bad))


def parse_document(document: object) -> tuple[tuple[CheckSpec, ...], list[str]]:
    problems: list[str] = []
    specs = parse_checks(
        document, defaults=CheckPolicy(), database=DatabaseTarget(), problems=problems
    )
    return specs, problems


@settings(max_examples=examples(1500), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(check_documents())
@example(
    DrawnFile(
        {"checks": [{"name": "a", "kind": "tcp", "host": "h", "port": 10**5000}]}, frozenset([0])
    )
)
@example(DrawnFile({"checks": [{"name": "a", "kind": "http", "url": "http://[::1"}]}, frozenset()))
def test_any_check_document_gives_specs_or_problem_lines(drawn: DrawnFile) -> None:
    """Any parsed document: specs, or one line per problem naming each bad check; never an
    exception, never a secret, and a refused check is never built."""
    specs, problems = parse_document(drawn.document)
    for problem in problems:
        assert problem.startswith(f"{CHECK_FILE}: "), problem
        assert len(problem.splitlines()) == 1, problem
        assert FILE_SECRET not in problem, problem
    for index in drawn.bad_checks:
        where = "defaults" if index < 0 else f"checks[{index}]"
        assert any(p.startswith(f"{CHECK_FILE}: {where}") for p in problems), (where, problems)
    if problems:
        return
    document = drawn.document
    assert isinstance(document, dict)
    checks = document["checks"]
    assert isinstance(checks, list)
    assert [spec.name for spec in specs] == [check["name"] for check in checks]
    assert len({spec.name for spec in specs}) == len(specs) >= 1
    for spec, check in zip(specs, checks, strict=True):
        assert spec.kind == check["kind"]
        assert spec.critical == (check.get("criticality", "critical") == "critical")
        policy = spec.policy
        assert 0 < policy.interval <= 3600
        assert 0 < policy.timeout <= 600
        assert 0 < policy.backoff_max <= 3600
        assert 1 <= policy.failure_threshold <= 1000
        assert 1 <= policy.success_threshold <= 1000
        if isinstance(spec, HttpSpec):
            assert 100 <= spec.status_min <= spec.status_max <= 599
        if isinstance(spec, TcpSpec):
            assert 1 <= spec.port <= 65535


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(drawn=check_documents())
def test_a_dumped_yaml_document_loads_as_it_parses(drawn: DrawnFile) -> None:
    """Written to a .yaml file and loaded, a document gives what parsing it gives."""
    path = _FILES_DIR / f"dumped-{uuid.uuid4().hex}.yaml"
    path.write_text(yaml.safe_dump(drawn.document, sort_keys=False))
    try:
        problems: list[str] = []
        specs = load_check_file(
            str(path), defaults=CheckPolicy(), database=DatabaseTarget(), problems=problems
        )
    finally:
        path.unlink()
    expected_specs, expected_problems = parse_document(drawn.document)
    assert problems == expected_problems
    assert specs == expected_specs


@settings(max_examples=examples(500), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    content=st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200),
        st.lists(
            st.sampled_from(
                [
                    "checks:",
                    "- name: a",
                    "  kind: tcp",
                    "[[checks]]",
                    'name = "a"',
                    "{",
                    "[",
                    "&a [*a]",
                    "<<: *a",
                    "!!binary x",
                    "\t",
                    "---",
                    "key: !!set {a}",
                    '"\\ud800"',
                    "port = 1e999",
                    "x: 2024-13-45",
                    "a = 1979-05-27T07:32:00Z",
                ]
            ),
            max_size=8,
        ).map("\n".join),
    ),
    suffix=st.sampled_from([".yaml", ".yml", ".toml"]),
)
def test_any_file_content_is_loaded_or_refused(content: bytes | str, suffix: str) -> None:
    """Any bytes in a .yaml or .toml file: checks, or problem lines; never an exception."""
    path = _FILES_DIR / f"content-{uuid.uuid4().hex}{suffix}"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", errors="surrogatepass")
    try:
        problems: list[str] = []
        load_check_file(
            str(path), defaults=CheckPolicy(), database=DatabaseTarget(), problems=problems
        )
    finally:
        path.unlink()
    for problem in problems:
        assert problem.startswith(f"{CHECK_FILE}: "), problem
        assert len(problem.splitlines()) == 1, problem
