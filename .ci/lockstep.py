#!/usr/bin/env python3
"""Refuse a release whose versions disagree.

The package version (sidecar/__init__.py) is the reference; every other place that names the
released version must say the same: both charts' `version` and `appVersion`, the app chart's
pin of the library, the library's default image tag, the image's OCI label, the plain
manifests and the component's remote ref, the README's install snippets and commands, and a
dated CHANGELOG.md section. With `--tag`, the git tag (v<version>) must match too. One line per
disagreement on stderr, exit 1; exit 0 when all agree.

    python3 .ci/lockstep.py [--root DIR] [--tag v0.3.0] [--notes]

`--notes` prints the version's CHANGELOG.md section (the release notes) once all agree.
Standard library only: the release workflow runs it before anything is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

VERSION = r"(\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?)"


@dataclass(frozen=True)
class Site:
    """One place that names the version: a file and a pattern whose group 1 is the version."""

    path: str
    what: str
    pattern: str

    def versions(self, root: Path) -> list[str]:
        text = (root / self.path).read_text(encoding="utf-8")
        return re.findall(self.pattern, text, flags=re.MULTILINE)


REFERENCE = Site("sidecar/__init__.py", "__version__", rf'^__version__ = "{VERSION}"$')
SITES = (
    Site("charts/health-sidecar/Chart.yaml", "version", rf"^version: {VERSION}$"),
    Site("charts/health-sidecar/Chart.yaml", "appVersion", rf'^appVersion: "{VERSION}"$'),
    Site(
        "charts/health-sidecar/Chart.yaml",
        "the health-sidecar-lib dependency's version",
        rf"- name: health-sidecar-lib\n\s+version: {VERSION}$",
    ),
    Site("charts/health-sidecar-lib/Chart.yaml", "version", rf"^version: {VERSION}$"),
    Site("charts/health-sidecar-lib/Chart.yaml", "appVersion", rf'^appVersion: "{VERSION}"$'),
    Site(
        "charts/health-sidecar-lib/templates/_defaults.tpl",
        "the default image tag",
        rf'^\s+tag: "{VERSION}"$',
    ),
    Site(
        "Dockerfile",
        "the image's version label",
        rf'org\.opencontainers\.image\.version="{VERSION}"',
    ),
    Site(
        "manifests/components/health-sidecar/inject/sidecar.yaml",
        "the image tag",
        rf"image: \S+/health-sidecar:{VERSION}$",
    ),
    Site("manifests/deployment.yaml", "app.kubernetes.io/version", rf'version: "{VERSION}"$'),
    Site(
        "README.md", "the image in the workload snippet", rf"image: \S+/health-sidecar:{VERSION}$"
    ),
    Site("README.md", "the kustomize `newTag`", rf"newTag: {VERSION}$"),
    Site(
        "README.md",
        "a version in an install command (helm --version, docker pull, cosign verify)",
        rf"(?:health-sidecar(?:-lib)?:|--version ){VERSION}",
    ),
    Site(
        "manifests/components/health-sidecar/kustomization.yaml",
        "the remote ref in its usage comment",
        rf"\?ref=v{VERSION}$",
    ),
    Site(
        "README.md",
        "the library chart dependency's version",
        rf"- name: health-sidecar-lib\n\s+version: {VERSION}$",
    ),
    Site(
        "CHANGELOG.md", "a dated release section", rf"^## \[{VERSION}\] - \d{{4}}-\d{{2}}-\d{{2}}$"
    ),
)


def problems(root: Path, tag: str | None = None) -> list[str]:
    """Every disagreement with the package version, one sentence each; empty when all agree."""
    found = REFERENCE.versions(root)
    if len(found) != 1:
        return [f"{REFERENCE.path}: no single {REFERENCE.what} line"]
    version = found[0]
    out = []
    if tag is not None and tag != f"v{version}":
        out.append(f"tag {tag!r} is not v{version}, the version of {REFERENCE.path}")
    for site in SITES:
        try:
            versions = site.versions(root)
        except OSError as error:
            out.append(f"{site.path}: unreadable: {error.strerror}")
            continue
        if not versions:
            out.append(f"{site.path}: {site.what}: no version found (expected {version})")
        elif site.path == "CHANGELOG.md":
            if version not in versions:
                out.append(f"{site.path}: no section '## [{version}] - <date>'")
        else:
            out.extend(
                f"{site.path}: {site.what} is {other}, not {version}"
                for other in versions
                if other != version
            )
    return out


def release_notes(root: Path) -> str:
    """The package version's CHANGELOG.md section, without its heading."""
    (version,) = REFERENCE.versions(root)
    text = (root / "CHANGELOG.md").read_text(encoding="utf-8")
    heading = re.search(rf"^## \[{re.escape(version)}\][^\n]*\n", text, flags=re.MULTILINE)
    if heading is None:
        return ""
    rest = text[heading.end() :]
    end = re.search(r"^## |^\[[^\]]+\]: ", rest, flags=re.MULTILINE)
    return (rest[: end.start()] if end else rest).strip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lockstep", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--tag", help="the git tag being released, e.g. v0.3.0")
    parser.add_argument("--notes", action="store_true", help="print the release notes")
    args = parser.parse_args(argv)
    found = problems(args.root, args.tag)
    for line in found:
        print(f"lockstep: {line}", file=sys.stderr)
    if found:
        return 1
    if args.notes:
        notes = release_notes(args.root)
        if not notes.strip():
            print("lockstep: CHANGELOG.md: the version's section is empty", file=sys.stderr)
            return 1
        sys.stdout.write(notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
