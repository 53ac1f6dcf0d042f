"""A Secret volume as kubelet writes it, and the sidecar's logs captured in memory.

Shared by tests/test_credentials.py (the DSN file watcher) and tests/test_rotation.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import structlog

from sidecar import logs

__all__ = ["READ_ONLY_MASK", "LogCapture", "SecretVolume", "captured_logs"]

# volume_linux.go roMask: Secret, ConfigMap, projected and downward API volumes are read-only.
READ_ONLY_MASK: Final = 0o440


# ---- a Secret volume, as kubelet writes it ---------------------------------------------------


class SecretVolume:
    """A directory kept the way kubelet's AtomicWriter keeps a Secret volume
    (kubernetes pkg/volume/util/atomic_writer.go, `Write`):

        <root>/..2024_05_01_10_00_00.123456/dsn   the data, mode defaultMode (0644 if unset)
        <root>/..data -> ..2024_05_01_10_00_00.123456
        <root>/dsn -> ..data/dsn                   what the pod reads

    Each `write` of a changed payload makes a new timestamped directory (0755), writes the files
    with `mode`, applies the pod's fsGroup to the whole volume (`set_permissions`, before anything
    points at the new directory), creates missing visible symlinks, points a `..data_tmp` symlink
    at the new directory and renames it over `..data` (the one atomic step), removes visible links
    of keys no longer in the payload, and deletes the old directory. An unchanged payload is not
    written at all, as kubelet skips it.

    The root is the tmpfs kubelet mounts for the volume: mode 1777, owned by root. With `fs_group`
    (the pod's fsGroup), pkg/volume/volume_linux.go's SetVolumeOwnership runs over the volume:
    every entry's group becomes fsGroup, a file's mode is ORed with 0440 (the volume is
    read-only: 0400 becomes 0440), a directory's with 0440 and setgid; symlinks are not chmodded.
    Without it, files stay root:root with `mode` exactly as given.
    """

    def __init__(self, root: Path, *, mode: int = 0o644, fs_group: int | None = None) -> None:
        self.root = root
        self.mode = mode
        self.fs_group = fs_group
        if not root.exists():
            root.mkdir(parents=True)
            root.chmod(0o1777)

    def path(self, key: str = "dsn") -> Path:
        return self.root / key

    def set_permissions(self, new_dir: str) -> None:
        """AtomicWriter's setPerms hook: SetVolumeOwnership over the whole volume, called with the
        new timestamped directory's name before `..data` points at it."""
        if self.fs_group is None:
            return
        for path in [self.root, *sorted(self.root.rglob("*"))]:
            os.lchown(path, -1, self.fs_group)
            if path.is_symlink():
                continue  # chmod would follow the link and change the file's defaultMode
            mode = stat.S_IMODE(path.lstat().st_mode) | READ_ONLY_MASK
            if path.is_dir():
                mode |= stat.S_ISGID
            path.chmod(mode)

    def write(self, payload: Mapping[str, str | bytes]) -> bool:
        """Project `payload` (key -> content); False when nothing changed (no write)."""
        data = {k: v.encode() if isinstance(v, str) else v for k, v in payload.items()}
        data_link = self.root / "..data"
        try:
            old_dir: str | None = os.readlink(data_link)
        except FileNotFoundError:
            old_dir = None
        to_remove: set[str] = set()
        if old_dir is not None:
            old = self.root / old_dir
            to_remove = {p.name for p in old.iterdir()} - set(data)
            unchanged = all(
                (old / k).exists() and (old / k).read_bytes() == v for k, v in data.items()
            )
            if unchanged and not to_remove:
                return False
        stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime())
        new_dir = Path(tempfile.mkdtemp(prefix=stamp, dir=self.root))
        new_dir.chmod(0o755)
        for key, content in data.items():
            (new_dir / key).write_bytes(content)
            (new_dir / key).chmod(self.mode)
        self.set_permissions(new_dir.name)
        for key in data:
            visible = self.path(key)
            if not visible.is_symlink():
                visible.symlink_to(f"..data/{key}")
        tmp_link = self.root / "..data_tmp"
        tmp_link.symlink_to(new_dir.name)
        tmp_link.rename(data_link)
        for key in to_remove:
            self.path(key).unlink()
        if old_dir is not None:
            shutil.rmtree(self.root / old_dir)
        return True

    def write_dsn(self, content: str | bytes, **others: str) -> bool:
        return self.write({"dsn": content, **others})


# ---- logs through the real pipeline ----------------------------------------------------------


class LogCapture:
    """JSON lines written by `sidecar.logs.configure(stream=...)` into memory."""

    def __init__(self, stream: io.StringIO, pipeline: logs.Pipeline) -> None:
        self.stream = stream
        # What configure() built: `pipeline.add_secrets` is what the sidecar wires to on_secrets.
        self.pipeline = pipeline

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        found = []
        for line in self.text.splitlines():
            event = json.loads(line)  # every line must be JSON: a non-JSON line fails the test
            if name is None or event.get("event") == name:
                found.append(event)
        return found


@contextlib.contextmanager
def captured_logs(secrets: Sequence[str] = ()) -> Iterator[LogCapture]:
    """Configure the sidecar's logging (debug, JSON, these secrets) into memory; restore after.

    Loggers are bound when a DsnFile or CheckLoop is built: build them inside the block."""
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    pipeline = logs.configure(level="debug", fmt="json", secrets=secrets, stream=stream)
    try:
        yield LogCapture(stream, pipeline)
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)
