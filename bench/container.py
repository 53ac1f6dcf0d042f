"""The sidecar as a container beside the sidecar as a process: start to Ready and RSS.

    .venv/bin/python -m bench.container [--rounds N] [--out DIR]   # as root; about 3 minutes

Builds the image the way tests/test_image.py does (buildah, a debootstrap base, a private
store), starts PostgreSQL in a network namespace (tests/support/pod.py), then in interleaved
rounds starts (a) the image with `podman run` in a pod namespace, with the chart's hardening
flags and the DSN from a file, and (b) `python -m sidecar` on this machine with the same
settings. Each is timed from the start command to the first 200 on /ready (polled every 5 ms),
and its RSS (the whole process tree: conmon and podman's own processes are not counted) read
after 3 s idle. Figures are medians; the ratio container/process is taken round by round.
Writes CONTAINER.md and container.json into --out (default bench/).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from support.image import BASE_IMAGE, IMAGE, shared_store  # noqa: E402
from support.pod import NetnsPostgres, PodNetwork  # noqa: E402

from bench import procs  # noqa: E402

IDLE_SECONDS = 3.0
READY_TIMEOUT = 60.0
POLL_SECONDS = 0.005


def wait_ready(host: str, port: int, started: float) -> float:
    """Seconds from `started` to the first 200 from /ready."""
    deadline = started + READY_TIMEOUT
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/ready", timeout=0.5) as answer:
                if answer.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        time.sleep(POLL_SECONDS)
    raise TimeoutError(f"{host}:{port}/ready not 200 within {READY_TIMEOUT}s")


def run_container(store: Any, net: PodNetwork, dsn_dir: Path, name: str) -> tuple[float, int]:
    started = time.monotonic()
    store.podman(
        "run", "--detach", "--name", name, "--network", f"ns:/run/netns/{net.pod_ns}",
        "--no-healthcheck", "--read-only", "--read-only-tmpfs=false", "--cap-drop=ALL",
        "--security-opt", "no-new-privileges", "--user", "65532:65532",
        "--volume", f"{dsn_dir}:/etc/health-sidecar/database:ro",
        "--env", "SIDECAR_DATABASE_URL_FILE=/etc/health-sidecar/database/url",
        "--env", "SIDECAR_LOG_LEVEL=warning", IMAGE,
    )  # fmt: skip
    try:
        seconds = wait_ready(net.pod_ip, 8081, started)
        time.sleep(IDLE_SECONDS)
        pid = int(store.podman("inspect", "--format", "{{.State.Pid}}", name).strip())
        return seconds, procs.tree_rss_bytes(pid)
    finally:
        store.podman("rm", "--force", "--time", "10", name, check=False)


def run_process(dsn_file: Path) -> tuple[float, int]:
    port = procs.free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "SIDECAR_DATABASE_URL_FILE": str(dsn_file),
        "SIDECAR_HOST": "127.0.0.1",
        "SIDECAR_PORT": str(port),
        "SIDECAR_LOG_LEVEL": "warning",
    }
    started = time.monotonic()
    proc = procs.spawn([sys.executable, "-m", "sidecar"], env=env)
    try:
        seconds = wait_ready("127.0.0.1", port, started)
        time.sleep(IDLE_SECONDS)
        return seconds, procs.tree_rss_bytes(proc.pid)
    finally:
        procs.stop(proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "bench")
    args = parser.parse_args(argv)
    store = shared_store()
    added = store.added_bytes(IMAGE, BASE_IMAGE)
    net = PodNetwork.create()
    pg = NetnsPostgres(net)
    work = Path(tempfile.mkdtemp(prefix="hs12-bench-"))
    work.chmod(0o755)
    rows: list[dict[str, float]] = []
    try:
        pg.start()
        container_dsn = work / "container"
        container_dsn.mkdir(mode=0o755)
        (container_dsn / "url").write_text(pg.dsn(host=net.db_ip))
        (container_dsn / "url").chmod(0o444)
        process_dsn = work / "process-url"
        process_dsn.write_text(pg.dsn())
        for round_no in range(args.rounds):
            order = ["container", "process"] if round_no % 2 == 0 else ["process", "container"]
            row: dict[str, float] = {}
            for kind in order:
                if kind == "container":
                    start, rss = run_container(store, net, container_dsn, f"hs12-bench-{round_no}")
                else:
                    start, rss = run_process(process_dsn)
                row[f"{kind}_start_s"], row[f"{kind}_rss_mib"] = start, rss / 2**20
            row["start_ratio"] = row["container_start_s"] / row["process_start_s"]
            row["rss_ratio"] = row["container_rss_mib"] / row["process_rss_mib"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        pg.cleanup()
        net.delete()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    median = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
    result = {"rounds": rows, "median": median, "added_layers_mb": added / 1e6}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "container.json").write_text(json.dumps(result, indent=2) + "\n")
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    (args.out / "CONTAINER.md").write_text(
        f"# The sidecar as a container (`python -m bench.container`)\n\n"
        f"Run of {stamp}, {args.rounds} interleaved rounds, medians; image built from the "
        f"Dockerfile on the test base (debootstrap bookworm, Python 3.11).\n\n"
        f"| | container (podman, runc) | process | container / process |\n|---|---|---|---|\n"
        f"| start to first 200 on /ready | {median['container_start_s'] * 1000:.0f} ms "
        f"| {median['process_start_s'] * 1000:.0f} ms | {median['start_ratio']:.2f}x |\n"
        f"| RSS after 3 s idle | {median['container_rss_mib']:.1f} MiB "
        f"| {median['process_rss_mib']:.1f} MiB | {median['rss_ratio']:.2f}x |\n\n"
        f"Layers the Dockerfile adds to its base: {added / 1e6:.1f} MB (`podman history`).\n"
        f"The container's start includes `podman run` itself (creating the container, the "
        f"network namespace join, runc); the process runs from the project's venv, which has "
        f"uvloop (the `fast` extra) and the test tools installed, where the image has only the "
        f"runtime dependencies: hence its higher RSS.\n"
    )
    print((args.out / "CONTAINER.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
