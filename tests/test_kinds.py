"""The registry of check kinds: each kind lives in its own module, named in one place."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from sidecar.kinds import MODULES, NAMES, every_kind, kind

SIDECAR = Path(__file__).resolve().parent.parent / "sidecar"
# The tcp kind as code names it: its word in quotes, its classes, its module, "a tcp check".
TCP_NAMES = re.compile(r"[\"']tcp[\"']|TcpSpec|TcpCheck|checks\.tcp|checks/tcp|tcp check")


def files_naming(pattern: re.Pattern[str]) -> set[str]:
    return {
        str(path.relative_to(SIDECAR))
        for path in SIDECAR.rglob("*.py")
        if pattern.search(path.read_text())
    }


def test_the_tcp_kind_is_named_only_by_its_module_and_the_registry() -> None:
    """Adding a kind touches its module and the registry: no other file of sidecar/ names tcp."""
    assert files_naming(TCP_NAMES) == {"checks/tcp.py", "kinds.py"}


def test_the_pattern_finds_a_kind_named_elsewhere(tmp_path: Path) -> None:
    """The pattern above sees the ways code names a kind (so the test above can fail)."""
    for text in ('if kind == "tcp":', "from sidecar.checks.tcp import TcpCheck", "a tcp check"):
        assert TCP_NAMES.search(text), text
    assert not TCP_NAMES.search('re.compile(r"^(tcp|udp|sctp)://")')


def test_every_registered_module_declares_its_kind() -> None:
    """Each registered module's KIND carries the name it is registered under, and its keys."""
    assert tuple(MODULES) == NAMES
    for found in every_kind():
        assert found is kind(found.name)
        assert found.keys, found.name
        assert len(set(found.key_names)) == len(found.key_names), found.name


def test_the_default_start_loads_no_other_kind_and_no_file_parser() -> None:
    """With the one postgres check and no check file, neither the http nor the tcp module nor a
    YAML/TOML parser is imported."""
    code = (
        "import sys\n"
        "from sidecar.app import create_app\n"
        "from sidecar.config import Settings\n"
        "create_app(Settings.from_environ({'SIDECAR_DATABASE_URL': 'postgresql://u@db/app'}))\n"
        "print(sorted(m for m in ('sidecar.checks.http', 'sidecar.checks.tcp', 'yaml',"
        " 'tomllib', 'sidecar.checkfile') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_a_check_file_loads_only_the_kinds_it_configures(tmp_path: Path) -> None:
    """A check file with a tcp check alone loads the tcp module, not the http one."""
    path = tmp_path / "checks.toml"
    path.write_text('[[checks]]\nname = "cache"\nkind = "tcp"\nhost = "127.0.0.1"\nport = 1\n')
    code = (
        "import sys\n"
        "from sidecar.config import Settings\n"
        f"Settings.from_environ({{'SIDECAR_CONFIG_FILE': {str(path)!r}}})\n"
        "kinds = ('sidecar.checks.http', 'sidecar.checks.tcp')\n"
        "print(sorted(m for m in kinds if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "['sidecar.checks.tcp']", out.stdout + out.stderr
