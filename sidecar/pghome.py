"""libpq's files under HOME, looked up only where looking cannot fail a check.

asyncpg, like libpq, looks for a client certificate and CA files in `~/.postgresql` (and for
`~/.pgpass`) on every connection, whatever the DSN asks for. "Not there" is fine; any other
error (a HOME the process may not search: a random UID with another user's home, as OpenShift
runs containers) is raised from the connect call, and a check that asked for no TLS at all
fails as network_error on every try. libpq itself would refuse such a file too; a sidecar must
not. asyncpg has no switch for these look-ups: HOME is their only input. So at start, when
they would fail, HOME is pointed at a directory that does not exist, which means "no such
files" to both, while a password file or service file that can still be read is kept by naming
it in PGPASSFILE or PGSERVICEFILE (unless those are set already).

A certificate asked for explicitly (sslcert/sslkey/sslrootcert in the DSN, PGSSL*, the check
file's cert_file/key_file/ca_file) is not looked up under HOME and is unaffected.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Final

# What libpq and asyncpg look for under HOME without being asked.
DEFAULT_TLS_FILES: Final = (
    ".postgresql/postgresql.crt",
    ".postgresql/postgresql.key",
    ".postgresql/root.crt",
    ".postgresql/root.crl",
)
# Kept readable under their own variables when HOME is moved.
KEPT_FILES: Final = (("PGPASSFILE", ".pgpass"), ("PGSERVICEFILE", ".pg_service.conf"))
# Debian's home of `nobody`: a path that exists nowhere, by convention.
HARMLESS_HOME: Final = "/nonexistent"


@dataclass(frozen=True, slots=True)
class Moved:
    """HOME was moved: from where, and why (the failed look-up, as an errno name)."""

    home: str
    problem: str


def _lookup_problem(path: str) -> str | None:
    """Why looking `path` up fails, other than it not being there; None if it does not."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    except ValueError:  # a NUL in HOME
        return "not a valid path"
    return None


def make_harmless(environ: MutableMapping[str, str]) -> Moved | None:
    """Point HOME somewhere harmless when a default look-up under it would fail (see above)."""
    # What pathlib.Path.home() gives asyncpg: HOME, else the password database's entry.
    home = environ.get("HOME") or os.path.expanduser("~")
    if not home or home == "~":
        return None  # no home at all: asyncpg skips the look-ups
    for name in DEFAULT_TLS_FILES:
        problem = _lookup_problem(os.path.join(home, name))
        if problem is not None:
            break
    else:
        return None
    for variable, name in KEPT_FILES:
        path = os.path.join(home, name)
        if variable not in environ and os.access(path, os.R_OK):
            environ[variable] = path
    environ["HOME"] = HARMLESS_HOME
    return Moved(home=home, problem=problem)
