#!/usr/bin/env python3
"""A CycloneDX SBOM of an image's Python environment, and the check that it is complete.

    python3 .ci/sbom.py IMAGE [--cli podman|docker] [--output sbom.cdx.json]

The image's own interpreter reports its `sys.path` and installed distributions; the image's
filesystem is exported (`<cli> create` + `<cli> export`: nothing runs as root in the image), and
`cyclonedx-py environment` (PyPI: cyclonedx-bom, installed beside the Python that runs this)
reads the distributions' metadata from that copy, with the project's pyproject.toml as the root
component, and validates the result against the CycloneDX schema. Then every distribution the
image holds must be in the SBOM with its version and at least one licence. Problems are printed
one per line, exit 1. The release workflow runs this on the image it pushed, and
tests/test_sbom.py on the image CI builds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# Asked of the image's interpreter: where it imports from, and what is installed there.
PROBE = (
    "import importlib.metadata as m, json, sys; "
    "print(json.dumps({'path': sys.path, "
    "'dists': {d.metadata['Name']: d.version for d in m.distributions()}}))"
)


ROOT = "health-sidecar"


def with_static_version(pyproject: str, version: str) -> str:
    """pyproject.toml's text with `dynamic = ["version"]` replaced by the given version."""
    return re.sub(r'^dynamic = \["version"\]$', f'version = "{version}"', pyproject, flags=re.M)


def normalized(name: str) -> str:
    """A distribution name as PEP 503 compares it (PyYAML == pyyaml, prometheus_client == -)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def inspect_image(
    cli: Sequence[str], image: str, env: Mapping[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """The image interpreter's sys.path and its installed distributions (name -> version)."""
    out = subprocess.run(
        [*cli, "run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c", PROBE],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    probed = json.loads(out.strip().splitlines()[-1])
    return [p for p in probed["path"] if p], dict(probed["dists"])


def export_paths(
    cli: Sequence[str],
    image: str,
    paths: Sequence[str],
    dest: Path,
    env: Mapping[str, str] | None = None,
) -> None:
    """Copy the image's files under `paths` into `dest` (regular files and directories only)."""
    created = subprocess.run(
        [*cli, "create", image], check=True, capture_output=True, text=True, env=env
    ).stdout.split()[-1]
    try:
        archive = dest.parent / "rootfs.tar"
        subprocess.run([*cli, "export", "--output", str(archive), created], check=True, env=env)
        extract(archive, paths, dest)
        archive.unlink()
    finally:
        subprocess.run([*cli, "rm", "--force", created], check=False, capture_output=True, env=env)


def extract(archive: Path, paths: Sequence[str], dest: Path) -> None:
    """Extract the regular files and directories under `paths` from a filesystem tar archive."""
    prefixes = tuple(p.strip("/") + "/" for p in paths)
    with tarfile.open(archive) as tar:
        members = [
            m
            for m in tar.getmembers()
            if (m.isfile() or m.isdir())
            and (m.name.rstrip("/") + "/").startswith(prefixes)
            and ".." not in PurePosixPath(m.name).parts
        ]
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=members, filter="data")
        else:
            # Python before 3.11.4 (Debian 12's python3 is 3.11.2) has no extraction filters:
            # the members are already only files and directories, relative, under sys.path.
            tar.extractall(dest, members=members)  # noqa: S202


def generate(rootfs: Path, image_path: Sequence[str], pyproject: Path, output: Path) -> None:
    """Run cyclonedx-py over the exported environment; it validates what it writes."""
    # cyclonedx-py asks the interpreter it is given for sys.path; this stand-in answers with
    # the image's path inside the exported copy.
    shown = json.dumps([str(rootfs / p.lstrip("/")) for p in image_path])
    interpreter = rootfs.parent / "image-python"
    interpreter.write_text(f"#!/bin/sh\nprintf '%s' {shlex.quote(shown)}\n", encoding="utf-8")
    interpreter.chmod(0o755)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "cyclonedx_py",
            "environment",
            "--pyproject",
            str(pyproject),
            "--mc-type",
            "application",
            "--output-reproducible",
            "--validate",
            "--output-file",
            str(output),
            str(interpreter),
        ],
        check=True,
    )


def licences(component: Mapping[str, Any]) -> list[str]:
    """A component's licences as written: SPDX ids, names or expressions."""
    found = []
    for entry in component.get("licenses", []):
        licence = entry.get("license", {})
        text = entry.get("expression") or licence.get("id") or licence.get("name")
        if text:
            found.append(str(text))
    return found


def problems(sbom: Mapping[str, Any], installed: Mapping[str, str], root: str) -> list[str]:
    """What makes `sbom` an incomplete account of `installed`; empty when it is complete.

    `root` is the project itself, which the SBOM names as its main component."""
    out = []
    if sbom.get("bomFormat") != "CycloneDX":
        out.append("not a CycloneDX document")
    main = sbom.get("metadata", {}).get("component", {})
    listed = {normalized(c.get("name", "")): c for c in sbom.get("components", [])}
    if main.get("name"):
        listed.setdefault(normalized(main["name"]), main)
    for name, version in sorted(installed.items()):
        component = listed.get(normalized(name))
        if component is None:
            out.append(f"{name} {version}: missing from the SBOM")
            continue
        if component.get("version") != version:
            out.append(f"{name}: the SBOM says {component.get('version')}, the image has {version}")
        if normalized(name) != normalized(root) and not licences(component):
            out.append(f"{name} {version}: no licence in the SBOM")
    if normalized(main.get("name", "")) != normalized(root):
        out.append(f"the SBOM's main component is {main.get('name')!r}, not {root!r}")
    return out


def build(
    cli: Sequence[str], image: str, output: Path, env: Mapping[str, str] | None = None
) -> list[str]:
    """Write the SBOM of `image` to `output`; return its problems."""
    image_path, installed = inspect_image(cli, image, env)
    with tempfile.TemporaryDirectory(prefix="sbom-") as scratch:
        rootfs = Path(scratch) / "rootfs"
        rootfs.mkdir()
        export_paths(cli, image, image_path, rootfs, env)
        # The project's version is dynamic (read from the package); give cyclonedx-py the
        # version the image holds, or its root component would have none.
        pyproject = Path(scratch) / "pyproject.toml"
        pyproject.write_text(
            with_static_version(
                (REPO / "pyproject.toml").read_text(encoding="utf-8"),
                installed.get(ROOT, ""),
            ),
            encoding="utf-8",
        )
        generate(rootfs, image_path, pyproject, output)
    sbom = json.loads(output.read_text(encoding="utf-8"))
    return problems(sbom, installed, root=ROOT)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sbom", description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("--cli", default="podman", help="podman (default) or docker")
    parser.add_argument("--output", type=Path, default=Path("sbom.cdx.json"))
    args = parser.parse_args(argv)
    found = build(shlex.split(args.cli), args.image, args.output, dict(os.environ))
    for line in found:
        print(f"sbom: {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
