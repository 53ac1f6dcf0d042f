"""Who may read a file of a Secret or ConfigMap volume, by kubelet's rules, from a pod spec alone.

kubelet (pkg/volume/util/atomic_writer.go, pkg/volume/volume_linux.go) writes each file owned by
root:root with the item's `mode`, else the volume's `defaultMode` (0644 when unset). With a pod
`fsGroup` it then sets the files' group to fsGroup and ORs 0440 into their mode (a Secret or
ConfigMap volume is read-only). A container runs as its securityContext's runAsUser/runAsGroup,
else the pod's, else the image's USER; fsGroup and supplementalGroups are added to its groups.
Pure logic, for render-level tests: what a pod would see, without running one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]

DEFAULT_MODE = 0o644  # kubelet's, for a Secret or ConfigMap volume without defaultMode
READ_ONLY_MASK = 0o440  # ORed in with an fsGroup (volume_linux.go, roMask)


@dataclass(frozen=True, slots=True)
class Identity:
    """The uid, primary gid and supplementary groups a container's process runs with."""

    uid: int
    gid: int
    groups: frozenset[int]


@dataclass(frozen=True, slots=True)
class ProjectedFile:
    """A file of a volume as kubelet leaves it: owner, group and permission bits."""

    uid: int
    gid: int
    mode: int


def identity(pod: Obj, container: Obj, image_user: tuple[int, int]) -> Identity:
    """The process identity of `container` in the pod spec `pod` (image USER as uid, gid)."""
    pod_sc = pod.get("securityContext") or {}
    own_sc = container.get("securityContext") or {}
    uid = own_sc.get("runAsUser", pod_sc.get("runAsUser", image_user[0]))
    gid = own_sc.get("runAsGroup", pod_sc.get("runAsGroup", image_user[1]))
    groups = {gid, *pod_sc.get("supplementalGroups", [])}
    if "fsGroup" in pod_sc:
        groups.add(pod_sc["fsGroup"])
    return Identity(uid=int(uid), gid=int(gid), groups=frozenset(int(g) for g in groups))


def projected_files(pod: Obj, volume: Obj) -> list[ProjectedFile]:
    """The files kubelet writes for a Secret or ConfigMap volume of the pod spec `pod`: one per
    item, or one standing for every key when the volume lists no items."""
    source = volume.get("secret") or volume.get("configMap")
    assert source is not None, f"not a Secret or ConfigMap volume: {volume}"
    default_mode = source.get("defaultMode", DEFAULT_MODE)
    modes = [item.get("mode", default_mode) for item in source.get("items") or [{}]]
    fs_group = (pod.get("securityContext") or {}).get("fsGroup")
    if fs_group is None:
        return [ProjectedFile(uid=0, gid=0, mode=mode) for mode in modes]
    return [ProjectedFile(uid=0, gid=int(fs_group), mode=mode | READ_ONLY_MASK) for mode in modes]


def can_read(who: Identity, file: ProjectedFile) -> bool:
    """POSIX permission check for reading (no capabilities: the containers drop them all)."""
    if who.uid == file.uid:
        return bool(file.mode & 0o400)
    if file.gid in who.groups:
        return bool(file.mode & 0o040)
    return bool(file.mode & 0o004)
