"""The sidecar as the soak runs it: the same `main`, plus a thread that writes the number of
asyncio tasks to a file every second (nothing outside the process can count them).

Bench-only; the production entry point has no such seam.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path

from aiohttp import web

from sidecar.config import Settings


def _watch_tasks(path: Path) -> None:
    import sidecar.server  # noqa: PLC0415 -- patched before main imports it lazily

    serve = sidecar.server.serve

    async def counted(app: web.Application, settings: Settings) -> None:
        loop = asyncio.get_running_loop()

        def report() -> None:
            while not loop.is_closed():
                try:
                    count = asyncio.run_coroutine_threadsafe(_count(), loop).result(5)
                except Exception:  # noqa: BLE001 -- the loop is shutting down
                    return
                path.write_text(f"{count}\n")
                time.sleep(1)

        threading.Thread(target=report, daemon=True, name="soak-tasks").start()
        await serve(app, settings)

    sidecar.server.serve = counted


async def _count() -> int:
    return len(asyncio.all_tasks())


if __name__ == "__main__":
    from sidecar.__main__ import main

    _watch_tasks(Path(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
