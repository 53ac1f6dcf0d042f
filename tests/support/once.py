"""Once per test run, however many pytest-xdist workers: an expensive resource (the built image,
a Patroni cluster) made by the first worker that asks for it, shared by the others, and torn
down when the whole run ends.

    def start_cluster(workdir: Path) -> dict[str, Any]:
        ...  # start it; output to files in `workdir`, never to a pipe (the worker may exit first)
        return {"pids": [...], "ports": [...]}  # JSON: all another worker needs to use it

    def stop_cluster(state: dict[str, Any]) -> None:  # module level: the controller imports it
        ...  # stop what `state` names, by PID

    @pytest.fixture(scope="session")
    def cluster() -> Cluster:
        return Cluster.from_state(once_per_run("patroni", start_cluster, stop_cluster))

How: the process that runs the session (xdist's controller, or pytest itself without xdist)
makes a run directory (`begin_run`) and hands it to the workers; `once_per_run` takes a file
lock there, so the first caller creates while the others wait, then every caller reads the
same JSON state. A failed `create` is recorded too: the others fail with its message at once
instead of trying again. `end_run` (the controller, after every worker has finished) calls each
`destroy(state)` and removes the directory. Outside a pytest run (bench/), `once_per_run` just
creates, and destroys at interpreter exit.

Per-worker resources stay ordinary session fixtures (each worker's `pg`): tests that count the
sessions or roles of a shared server must not see another worker's.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import importlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

__all__ = [
    "LISTEN_QUEUES",
    "RUN_DIR_ENV",
    "OnceFailed",
    "begin_run",
    "end_run",
    "exclusive",
    "once_per_run",
    "run_dir",
]

# Set by `begin_run` in the session's process and passed to every xdist worker (see conftest).
RUN_DIR_ENV: Final = "HEALTH_SIDECAR_TEST_RUN_DIR"

# For `exclusive`: the network namespace's count of accept-queue overflows (TcpExt
# ListenOverflows), which a burst of connects at any listener raises.
LISTEN_QUEUES: Final = "listen-queues"

State = dict[str, Any]
_made: dict[str, State] = {}  # per process: what this process has already read or made


class OnceFailed(RuntimeError):
    """The resource's `create` failed in whichever process tried first."""


def begin_run() -> Path:
    """Make this run's directory and publish it in the environment (workers inherit it)."""
    path = Path(tempfile.mkdtemp(prefix="health-sidecar-run-"))
    os.environ[RUN_DIR_ENV] = str(path)
    return path


def run_dir() -> Path | None:
    value = os.environ.get(RUN_DIR_ENV)
    return Path(value) if value else None


def _reference(function: Callable[..., object]) -> str:
    module = function.__module__
    name = function.__qualname__
    if "<" in name or module == "__main__":
        raise ValueError(f"destroy must be a module-level function, not {module}.{name}")
    return f"{module}:{name}"


def _resolve(reference: str) -> Callable[[State], object]:
    module, _, name = reference.partition(":")
    function: Callable[[State], object] = getattr(importlib.import_module(module), name)
    return function


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        # Blocks while another worker creates: a build may take minutes, and it is what we
        # would otherwise do ourselves.
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def exclusive(name: str) -> Iterator[None]:
    """Hold `name` against every other process of this run while the block runs: for a test
    that counts something machine-wide another test disturbs (the kernel's listen-queue
    overflows), both hold the same name around the part that matters."""
    run = run_dir()
    if run is None:
        yield
        return
    with _locked(run / f"exclusive-{name}.lock"):
        yield


def once_per_run(
    name: str, create: Callable[[Path], State], destroy: Callable[[State], object]
) -> State:
    """The state `create(workdir)` returned for `name` in this run, created on first use by
    whichever process asks first; `destroy(state)` runs once, when the run ends."""
    if name in _made:
        return _made[name]
    run = run_dir()
    if run is None:  # not under pytest (bench/): this process is the whole run
        workdir = Path(tempfile.mkdtemp(prefix=f"health-sidecar-{name}-"))
        state = create(workdir)
        atexit.register(shutil.rmtree, workdir, ignore_errors=True)
        atexit.register(destroy, state)
        _made[name] = state
        return state
    record_path = run / f"{name}.json"
    with _locked(run / f"{name}.lock"):
        if record_path.exists():
            record = json.loads(record_path.read_text())
        else:
            workdir = run / name
            workdir.mkdir()
            record = {"destroy": _reference(destroy)}
            try:
                record["state"] = create(workdir)
            # Any failure is recorded: the others must fail with it, not wait and try again.
            except Exception as error:  # noqa: BLE001
                record["error"] = f"{type(error).__name__}: {error}"
            tmp = record_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record))
            tmp.replace(record_path)
    if "error" in record:
        raise OnceFailed(f"{name}: {record['error']}")
    shared: State = record["state"]
    _made[name] = shared
    return shared


def end_run(run: Path) -> None:
    """Destroy every resource made in `run` (each once, whatever fails), then the directory."""
    for record_path in sorted(run.glob("*.json")):
        record = json.loads(record_path.read_text())
        if "state" not in record:
            continue
        try:
            _resolve(record["destroy"])(record["state"])
        except Exception as error:  # noqa: BLE001 -- one failed teardown must not skip the rest
            print(f"once_per_run: destroying {record_path.stem}: {error!r}", file=sys.stderr)
    shutil.rmtree(run, ignore_errors=True)
