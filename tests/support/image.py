"""Container images built on this machine: a private podman/buildah store, a Debian base made
with debootstrap, and the project's image built from the unchanged Dockerfile.

No registry is reachable here, so the base the Dockerfile's FROM names is made locally
(`debootstrap --variant=minbase` from the Debian mirror apt uses) and imported under that name.
The machine's pip configuration and CA bundle go into that test base only, so pip inside the
build reaches the package index the way this machine does; the Dockerfile is never changed.

Everything lives under one temporary directory (store, run root, containers.conf), so nothing
touches the machine's own container storage and `Store.cleanup()` removes it all.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from . import REPO
from .once import once_per_run

__all__ = [
    "APP_IMAGE",
    "BASE_IMAGE",
    "IMAGE",
    "IMAGE_GROUP",
    "ImageToolMissing",
    "Layer",
    "Store",
    "base_from_dockerfile",
    "missing_image_tools",
    "shared_store",
]

DOCKERFILE: Final = REPO / "Dockerfile"
IMAGE: Final = "localhost/health-sidecar:test"
# The xdist group of every test that builds or runs the image: they share one worker, so the
# builds and containers never compete with each other for the two cores.
IMAGE_GROUP: Final = "image"
APP_IMAGE: Final = "localhost/hs-stand-in-app:test"
TOOLS: Final = ("buildah", "podman", "runc", "debootstrap", "conmon", "ip")
COMMAND_TIMEOUT_SECONDS: Final = 900.0

# podman's defaults that this machine refuses (see containers.conf(5)): crun fails on the hybrid
# cgroup layout, the default rlimits exceed the hard limits, and there is no systemd.
CONTAINERS_CONF: Final = """\
[containers]
default_ulimits = ["nofile=16384:16384", "nproc=4096:4096"]
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""

# The stand-in app: the smallest process that answers HTTP on the port given as its argument,
# from the same base, and exits 0 on SIGTERM as a well-behaved app does.
APP_CONTAINERFILE: Final = """\
FROM python:3.11-slim-bookworm
COPY app.py /app.py
USER 10001:10001
ENTRYPOINT ["python3", "/app.py"]
"""
APP_SCRIPT: Final = """\
import http.server, signal, sys, threading
handler = http.server.SimpleHTTPRequestHandler
server = http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), handler)
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
server.serve_forever()
"""


class ImageToolMissing(RuntimeError):
    """A tool the image tests need is not installed (.ci/image-tools.sh installs them)."""


def missing_image_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def base_from_dockerfile(dockerfile: Path = DOCKERFILE) -> str:
    """The image the Dockerfile's first FROM names (every stage here uses the same one)."""
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words and words[0].upper() == "FROM":
            return words[1]
    raise ValueError(f"no FROM in {dockerfile}")


@dataclass(frozen=True)
class Layer:
    """One row of `podman history`: the instruction that made it and its size in bytes."""

    created_by: str
    size: int


class Store:
    """A private container store: every podman/buildah call goes through `run` with its own
    CONTAINERS_CONF and storage root, so images and containers made here are ours alone."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or Path(tempfile.mkdtemp(prefix="hs12-store-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.conf = self.root / "containers.conf"
        self.conf.write_text(CONTAINERS_CONF)
        self.storage_conf = self.root / "storage.conf"
        self.storage_conf.write_text(
            "[storage]\n"
            'driver = "overlay"\n'
            f'graphroot = "{self.root / "graph"}"\n'
            f'runroot = "{self.root / "run"}"\n'
        )
        (self.root / "tmp").mkdir(exist_ok=True)

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            CONTAINERS_CONF=str(self.conf),
            CONTAINERS_STORAGE_CONF=str(self.storage_conf),
            TMPDIR=str(self.root / "tmp"),
            BUILDAH_ISOLATION="chroot",
        )
        return env

    def run(
        self,
        *args: str,
        input_bytes: bytes | None = None,
        check: bool = True,
        timeout: float = COMMAND_TIMEOUT_SECONDS,
    ) -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run(
            list(args),
            input=input_bytes,
            env=self.env,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args[:3])}... exited {result.returncode}:\n"
                f"{result.stdout.decode(errors='replace')[-4000:]}\n"
                f"{result.stderr.decode(errors='replace')[-4000:]}"
            )
        return result

    def podman(self, *args: str, check: bool = True, timeout: float = 120.0) -> str:
        return self.run("podman", *args, check=check, timeout=timeout).stdout.decode()

    # ---- the base ---------------------------------------------------------------------------

    def import_base(self, name: str, *, mirror: str | None = None) -> None:
        """The base the Dockerfile's FROM names, made by `.ci/build-image.sh --base-only` (the
        README's offline build): debootstrap a minimal bookworm with python3-venv and pip, the
        machine's pip settings and CA bundle and a `python` command, imported as `name`."""
        if name != BASE_IMAGE:
            raise ValueError(f"the script makes the Dockerfile's base {BASE_IMAGE}, not {name}")
        env = {**self.env, "MIRROR": mirror or debian_mirror()}
        result = subprocess.run(
            ["bash", str(REPO / ".ci" / "build-image.sh"), "--base-only"],
            env=env,
            capture_output=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"building the base failed: {result.stderr.decode()[-2000:]}")

    # ---- builds -----------------------------------------------------------------------------

    def build(
        self,
        tag: str,
        context: Path,
        *,
        containerfile: Path | None = None,
        build_args: Mapping[str, str] | None = None,
    ) -> None:
        args = [
            "buildah",
            "bud",
            "--isolation",
            "chroot",
            "--pull=never",
            "--format",
            "docker",  # the OCI format drops HEALTHCHECK
            "--layers",
            "-t",
            tag,
        ]
        for key, value in (build_args or {}).items():
            args += ["--build-arg", f"{key}={value}"]
        if containerfile is not None:
            args += ["-f", str(containerfile)]
        self.run(*args, str(context))

    def build_app(self) -> None:
        context = self.root / "app-context"
        context.mkdir(exist_ok=True)
        (context / "Containerfile").write_text(APP_CONTAINERFILE)
        (context / "app.py").write_text(APP_SCRIPT)
        self.build(APP_IMAGE, context, containerfile=context / "Containerfile")

    # ---- inspection -------------------------------------------------------------------------

    def inspect(self, image: str) -> dict[str, Any]:
        data = json.loads(self.podman("image", "inspect", image))
        assert isinstance(data, list)
        assert data
        first: dict[str, Any] = data[0]
        return first

    def has(self, image: str) -> bool:
        return self.run("podman", "image", "exists", image, check=False).returncode == 0

    def history(self, image: str) -> list[Layer]:
        rows = json.loads(self.podman("history", "--format", "json", image))
        return [Layer(str(row.get("CreatedBy", "")), int(row.get("size", 0))) for row in rows]

    def added_bytes(self, image: str, base: str) -> int:
        """Bytes of the layers `image` adds on top of `base` (podman history, newest first)."""
        ours = self.history(image)
        theirs = self.history(base)
        return sum(layer.size for layer in ours[: len(ours) - len(theirs)])

    def run_in_image(self, image: str, *command: str, entrypoint: str | None = None) -> str:
        args = ["run", "--rm", "--network", "none", "--no-healthcheck"]
        if entrypoint is not None:
            args += ["--entrypoint", entrypoint]
        return self.podman(*args, image, *command)

    def cleanup(self) -> None:
        """Remove every container and image of this store, then the store itself."""
        # Not `podman system reset`: it also deletes the machine's network configuration.
        self.run("podman", "rm", "--all", "--force", "--time", "0", check=False)
        self.run("podman", "rmi", "--all", "--force", check=False, timeout=300)
        self.run("buildah", "rm", "--all", check=False)
        subprocess.run(["umount", "-R", str(self.root / "graph")], capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


# Imported under exactly the name the Dockerfile's FROM uses (podman files a short name under
# localhost/, where buildah --pull=never finds it).
BASE_IMAGE: Final = base_from_dockerfile()
_shared: Store | None = None


def shared_store() -> Store:
    """One store per test run with the base, the project's image and the stand-in app, built
    once by the first worker that asks (`once_per_run`) and shared by all; removed when the run
    ends.

    IMAGE_TEST_STORE=<dir> keeps a store between runs (for working on these tests): images
    already in it are not rebuilt, and it is not removed."""
    global _shared  # noqa: PLW0603  # one store per process, built on first use
    if _shared is None:
        missing = missing_image_tools()
        if missing:
            raise ImageToolMissing(f"{', '.join(missing)} not installed: run .ci/image-tools.sh")
        kept = os.environ.get("IMAGE_TEST_STORE")
        if kept:
            _shared = _fill_store(Store(Path(kept)), kept=True)
        else:
            state = once_per_run("image-store", _build_store, _remove_store)
            _shared = Store(Path(state["root"]))
    return _shared


def _fill_store(store: Store, *, kept: bool) -> Store:
    if not (kept and store.has(BASE_IMAGE)):
        store.import_base(BASE_IMAGE)
    if not (kept and store.has(IMAGE)):
        store.build(IMAGE, REPO)
    if not (kept and store.has(APP_IMAGE)):
        store.build_app()
    return store


def _build_store(workdir: Path) -> dict[str, str]:
    store = Store(workdir / "store")
    try:
        _fill_store(store, kept=False)
    except BaseException:
        store.cleanup()
        raise
    return {"root": str(store.root)}


def _remove_store(state: dict[str, str]) -> None:
    Store(Path(state["root"])).cleanup()


def debian_mirror() -> str:
    """The mirror apt uses here (deb822 or one-line sources), Debian's own otherwise."""
    candidates: Sequence[Path] = [
        *sorted(Path("/etc/apt/sources.list.d").glob("*.sources")),
        Path("/etc/apt/sources.list"),
        *sorted(Path("/etc/apt/sources.list.d").glob("*.list")),
    ]
    for path in candidates:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = line.split()
            if words[:1] == ["URIs:"] and len(words) > 1 and "security" not in words[1]:
                return words[1]
            if words[:1] == ["deb"]:
                url = next((w for w in words[1:] if "://" in w), None)
                if url and "security" not in url:
                    return url
    return "http://deb.debian.org/debian"
