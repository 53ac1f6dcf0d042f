"""A pod on this machine: network namespaces, a PostgreSQL database host, podman containers
run from a rendered pod spec with its securityContext, env, args and volumes.

Network (every name carries the test's prefix, `hs12-`, and a random suffix; all are removed):

    root namespace (the kubelet) --veth-- pod namespace (the containers) --veth-- db namespace
                 \\_________________________veth______________________________/  (admin SQL)

The containers reach PostgreSQL only over the pod<->db pair, so dropping packets on the db
side of that pair blackholes the database for the pod while the test can still reach it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .image import Store
from .pg import PostgresServer, _as_os_user, _subprocess_env
from .secretvolume import SecretVolume

__all__ = [
    "NetnsPostgres",
    "PodNetwork",
    "PodmanRuntime",
    "project_volumes",
]

Obj = dict[str, Any]
# Each network takes a random unused 10.N.0.0/16 (N from 200 to 249), so two at once (parallel
# tests, the bench) do not clash; this machine's own network is elsewhere.
SUBNET_RANGE: Final = range(200, 250)


def ip(*args: str, netns: str | None = None) -> None:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    subprocess.run([*prefix, "ip", *args], check=True, capture_output=True, timeout=30)


def _unused_subnet() -> str:
    """A random 10.N of SUBNET_RANGE that no address here is in yet: tests on parallel workers
    and the bench each hold one (the root namespace holds an address of each)."""
    shown = subprocess.run(
        ["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    free = [n for n in SUBNET_RANGE if f" 10.{n}." not in shown]
    return f"10.{secrets.choice(free or SUBNET_RANGE)}"


@dataclass(frozen=True)
class PodNetwork:
    """Two namespaces and three veth pairs; addresses fixed within this process's subnet."""

    subnet: str  # the first two octets, "10.N"
    pod_ns: str
    db_ns: str
    pod_ip: str  # where the kubelet reaches the pod
    db_admin_ip: str  # where the test reaches the database
    db_ip: str  # where the pod reaches the database
    pod_db_side_ip: str  # the pod's address on the pod<->db link (its sessions' client_addr)
    links: tuple[str, ...]

    @classmethod
    def create(cls, tag: str = "") -> PodNetwork:
        suffix = tag or secrets.token_hex(2)
        pod_ns, db_ns = f"hs12-pod-{suffix}", f"hs12-db-{suffix}"
        subnet = _unused_subnet()
        net = cls(
            subnet=subnet,
            pod_ns=pod_ns,
            db_ns=db_ns,
            pod_ip=f"{subnet}.1.2",
            db_admin_ip=f"{subnet}.2.2",
            db_ip=f"{subnet}.3.2",
            pod_db_side_ip=f"{subnet}.3.1",
            links=(f"h12p{suffix}", f"h12d{suffix}"),
        )
        subprocess.run(["ip", "netns", "add", pod_ns], check=True, timeout=30)
        subprocess.run(["ip", "netns", "add", db_ns], check=True, timeout=30)
        try:
            for ns in (pod_ns, db_ns):
                ip("link", "set", "lo", "up", netns=ns)
            # root <-> pod, root <-> db
            for host_end, ns, third in ((net.links[0], pod_ns, 1), (net.links[1], db_ns, 2)):
                ip("link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
                ip("addr", "add", f"{subnet}.{third}.1/30", "dev", host_end)
                ip("link", "set", host_end, "up")
                ip("addr", "add", f"{subnet}.{third}.2/30", "dev", "eth0", netns=ns)
                ip("link", "set", "eth0", "up", netns=ns)
            # pod <-> db
            ip("link", "add", "todb", "netns", pod_ns, "type", "veth", "peer", "name", "topod",
               "netns", db_ns)  # fmt: skip
            ip("addr", "add", f"{net.pod_db_side_ip}/30", "dev", "todb", netns=pod_ns)
            ip("addr", "add", f"{net.db_ip}/30", "dev", "topod", netns=db_ns)
            ip("link", "set", "todb", "up", netns=pod_ns)
            ip("link", "set", "topod", "up", netns=db_ns)
        except BaseException:
            net.delete()
            raise
        return net

    def blackhole(self, on: bool) -> None:
        """Drop every packet from the pod at the database host (no reset, no answer)."""
        action = "-I" if on else "-D"
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.db_ns,
                "iptables",
                action,
                "INPUT",
                "-i",
                "topod",
                "-j",
                "DROP",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )

    def delete(self) -> None:
        for link in self.links:
            subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)
        for ns in (self.pod_ns, self.db_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


class NetnsPostgres(PostgresServer):
    """A PostgreSQL server started inside the database namespace, reachable on all its
    addresses; the test talks to it on `host` (the admin link)."""

    def __init__(self, net: PodNetwork, **kwargs: Any) -> None:
        super().__init__(
            settings={"listen_addresses": "*"},
            hba_lines=[f"host all all {net.subnet}.0.0/16 scram-sha-256"],
            **kwargs,
        )
        self.net = net
        self.host = net.db_admin_ip

    def _pg_ctl(self, action: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.net.db_ns, *_as_os_user(),
             str(self.bindir / "pg_ctl"), action, "-D", str(self.data_dir), "-t", "60", *args],
            cwd=self.data_dir.parent,
            env=_subprocess_env(),
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )  # fmt: skip


def project_volumes(spec: Obj, objects: list[Obj], root: Path) -> dict[str, SecretVolume]:
    """Every Secret and ConfigMap volume of `spec`, from the rendered `objects`, projected under
    `root` as kubelet would (SecretVolume: AtomicWriter, `items` (key -> path) or every key,
    `defaultMode`, the pod's fsGroup). Refuses a volume kind it does not project."""
    fs_group = spec.get("securityContext", {}).get("fsGroup")
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    projected: dict[str, SecretVolume] = {}
    for volume in spec.get("volumes", []):
        if "secret" in volume:
            source = volume["secret"]
            obj = by_name[("Secret", source["secretName"])]
            data = {k: base64.b64decode(v).decode() for k, v in obj.get("data", {}).items()}
            data.update(obj.get("stringData", {}))
        elif "configMap" in volume:
            source = volume["configMap"]
            data = dict(by_name[("ConfigMap", source["name"])].get("data", {}))
        elif "emptyDir" in volume:
            continue  # made by the runtime
        else:
            raise NotImplementedError(f"volume {volume['name']}: {sorted(volume)} not projected")
        items = source.get("items") or [{"key": k, "path": k} for k in data]
        payload = {item["path"]: data[item["key"]] for item in items}
        target = SecretVolume(
            root / volume["name"], mode=source.get("defaultMode", 0o644), fs_group=fs_group
        )
        target.write(payload)
        projected[volume["name"]] = target
    return projected


class PodmanRuntime:
    """Runs a pod spec's containers with podman in the pod's network namespace."""

    def __init__(
        self,
        store: Store,
        spec: Obj,
        net: PodNetwork,
        *,
        images: Mapping[str, str],
        volumes: Mapping[str, SecretVolume],
        app_args: Mapping[str, list[str]] | None = None,
    ) -> None:
        self.store = store
        self.spec = spec
        self.net = net
        self.images = images
        self.volumes = volumes
        self.app_args = dict(app_args or {})
        self.prefix = f"hs12-{secrets.token_hex(3)}"
        self.scratch = Path(tempfile.mkdtemp(prefix="hs12-empty-"))
        self.containers = {
            c["name"]: c for c in [*spec.get("initContainers", []), *spec["containers"]]
        }

    def container_name(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def run_args(self, name: str) -> list[str]:
        """podman run flags for the container as the pod spec describes it."""
        c = self.containers[name]
        args = ["run", "--detach", "--name", self.container_name(name)]
        args += ["--network", f"ns:/run/netns/{self.net.pod_ns}", "--read-only-tmpfs=false"]
        # Kubernetes ignores HEALTHCHECK (podman would want systemd timers for it).
        args.append("--no-healthcheck")
        args += self.security_args(name)
        limits = c.get("resources", {}).get("limits", {})
        if "memory" in limits:
            args += ["--memory", str(limits["memory"]).replace("Mi", "m").replace("Gi", "g")]
        if "cpu" in limits:
            cpu = str(limits["cpu"])
            args += ["--cpus", str(int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu))]
        if "workingDir" in c:
            args += ["--workdir", c["workingDir"]]
        for variable in c.get("env", []):
            assert "value" in variable, f"{variable['name']}: only literal values are run"
            args += ["--env", f"{variable['name']}={variable['value']}"]
        args += self.volume_args(name)
        args += self.command_args(name)
        return args

    def security_args(self, name: str) -> list[str]:
        """The pod's and the container's securityContext (the container's wins)."""
        pod_sc = self.spec.get("securityContext", {})
        sc = {**pod_sc, **self.containers[name].get("securityContext", {})}
        args = []
        if "runAsUser" in sc:
            # Without runAsGroup the runtime picks the group (the image's, else 0), as here.
            group = f":{sc['runAsGroup']}" if "runAsGroup" in sc else ""
            args += ["--user", f"{sc['runAsUser']}{group}"]
        for extra in [*pod_sc.get("supplementalGroups", []), pod_sc.get("fsGroup")]:
            if extra is not None:
                args += ["--group-add", str(extra)]
        if sc.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        if "ALL" in sc.get("capabilities", {}).get("drop", []):
            args.append("--cap-drop=ALL")
        args += [f"--cap-add={cap}" for cap in sc.get("capabilities", {}).get("add", [])]
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        return args

    def volume_args(self, name: str) -> list[str]:
        args = []
        volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        for mount in self.containers[name].get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "emptyDir" in volume:
                path = self.scratch / mount["name"]
                path.mkdir(exist_ok=True)
                path.chmod(0o1777)
                ro = ":ro" if mount.get("readOnly") else ""
                args += ["--volume", f"{path}:{mount['mountPath']}{ro}"]
            else:
                # Secret and ConfigMap volumes are mounted read-only whatever the mount says
                # (kubelet_pods.go makeMounts: the plugin's ReadOnly attribute).
                args += ["--volume", f"{self.volumes[mount['name']].root}:{mount['mountPath']}:ro"]
        return args

    def command_args(self, name: str) -> list[str]:
        """The image and what it runs: `command` replaces the ENTRYPOINT (and the image's CMD
        with it), `args` replace the CMD; the test's `app_args` stand in for a stand-in image."""
        c = self.containers[name]
        entrypoint = []
        if "command" in c:
            entrypoint = ["--entrypoint", json.dumps(c["command"])]
        return [*entrypoint, self.images[name], *self.app_args.get(name, c.get("args", []))]

    async def _podman(self, *args: str, check: bool = True) -> str:
        return await asyncio.to_thread(self.store.podman, *args, check=check)

    async def start(self, name: str) -> None:
        await self._podman("rm", "--force", "--time", "0", self.container_name(name), check=False)
        await self._podman(*self.run_args(name))

    async def signal(self, name: str, signal: str) -> None:
        await self._podman("kill", "--signal", signal, self.container_name(name), check=False)

    async def exec(self, name: str, command: list[str]) -> int:
        result = await asyncio.to_thread(
            self.store.run, "podman", "exec", self.container_name(name), *command, check=False
        )
        return result.returncode

    async def running(self, name: str) -> bool:
        out = await self._podman(
            "inspect", "--format", "{{.State.Running}}", self.container_name(name), check=False
        )
        return out.strip() == "true"

    async def exit_code(self, name: str) -> int | None:
        out = await self._podman(
            "inspect", "--format", "{{.State.Running}} {{.State.ExitCode}}",
            self.container_name(name), check=False,
        )  # fmt: skip
        words = out.split()
        if len(words) != 2 or words[0] == "true":
            return None
        return int(words[1])

    def pid(self, name: str) -> int:
        return int(self.store.podman("inspect", "--format", "{{.State.Pid}}",
                                     self.container_name(name)).strip())  # fmt: skip

    def logs(self, name: str) -> str:
        result = self.store.run("podman", "logs", self.container_name(name), check=False)
        return (result.stdout + result.stderr).decode(errors="replace")

    def cleanup(self) -> None:
        for name in self.containers:
            self.store.run("podman", "rm", "--force", "--time", "0", self.container_name(name),
                           check=False)  # fmt: skip
        shutil.rmtree(self.scratch, ignore_errors=True)
