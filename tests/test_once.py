"""`support.once.once_per_run`: a resource made once for all the processes of a test run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.once import RUN_DIR_ENV, end_run

TESTS = Path(__file__).resolve().parent

# A resource whose creation and destruction leave a line in files beside it; `create` takes a
# moment, so that concurrent callers overlap, and fails when asked to.
RESOURCE = """\
import os, time
from pathlib import Path

LEDGER = Path(os.environ["LEDGER"])


def create(workdir):
    with (LEDGER / "created").open("a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(0.5)
    if os.environ.get("FAIL"):
        raise RuntimeError("cannot make it")
    (workdir / "made").write_text("yes")
    return {"by": os.getpid(), "workdir": str(workdir)}


def destroy(state):
    with (LEDGER / "destroyed").open("a") as f:
        f.write(f"{state['by']}\\n")
"""
CALLER = """\
import json, sys
from support.once import OnceFailed, once_per_run
import resource_under_test as r
try:
    for _ in range(2):
        state = once_per_run("thing", r.create, r.destroy)
except OnceFailed as error:
    print(json.dumps({"failed": str(error)}))
else:
    print(json.dumps(state))
"""


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory for the resource's module and the lines it leaves."""
    (tmp_path / "resource_under_test.py").write_text(RESOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("LEDGER", str(tmp_path))
    return tmp_path


def callers(ledger: Path, count: int, run: Path | None, **env: str) -> list[dict[str, str]]:
    """`count` processes asking for the resource at once; what each got."""
    environ = {k: v for k, v in os.environ.items() if k != RUN_DIR_ENV}
    environ.update(env, PYTHONPATH=f"{TESTS}{os.pathsep}{ledger}")
    if run is not None:
        environ[RUN_DIR_ENV] = str(run)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CALLER], env=environ, stdout=subprocess.PIPE, text=True
        )
        for _ in range(count)
    ]
    outputs = [p.communicate(timeout=60)[0] for p in processes]
    assert [p.returncode for p in processes] == [0] * count, outputs
    return [json.loads(out) for out in outputs]


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_concurrent_callers_share_one_creation_destroyed_once_at_the_end(
    ledger: Path, tmp_path: Path
) -> None:
    """Three processes at once: one creates, all get its state; end_run destroys it once."""
    run = tmp_path / "run"
    run.mkdir()
    states = callers(ledger, 3, run)
    assert len(lines(ledger / "created")) == 1
    assert {json.dumps(s) for s in states} == {json.dumps(states[0])}
    assert (Path(states[0]["workdir"]) / "made").read_text() == "yes"
    assert lines(ledger / "destroyed") == []
    end_run(run)
    assert lines(ledger / "destroyed") == [str(states[0]["by"])]
    assert not run.exists()


def test_a_failed_creation_fails_every_caller_without_a_retry(ledger: Path, tmp_path: Path) -> None:
    """`create` raised in the first caller: the others fail with its message, none retries."""
    run = tmp_path / "run"
    run.mkdir()
    results = callers(ledger, 2, run, FAIL="1")
    assert len(lines(ledger / "created")) == 1
    assert [r["failed"] for r in results] == ["thing: RuntimeError: cannot make it"] * 2
    end_run(run)
    assert lines(ledger / "destroyed") == []


def test_outside_a_run_each_process_creates_and_destroys_its_own(ledger: Path) -> None:
    """No run directory (bench/): the process creates once and destroys at exit."""
    (state,) = callers(ledger, 1, None)
    assert lines(ledger / "created") == [str(state["by"])]
    assert lines(ledger / "destroyed") == [str(state["by"])]
    assert not Path(state["workdir"]).exists()
