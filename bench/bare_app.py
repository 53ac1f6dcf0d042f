"""Bare aiohttp serving a fixed /ready body: the framework's ceiling for the sidecar.

    python -m bench.bare_app --port 8090 [--body-file body.json] [--uvloop]

No middleware, no access log, one handler returning bytes built once at start.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Final

from aiohttp import web

# The shape of the sidecar's passing /ready answer (README.md, Endpoints), used when the harness
# has not captured the real one.
DEFAULT_BODY: Final = (
    b'{"status":"pass","serviceId":"health-sidecar","releaseId":"0.3.0","checks":{"postgres":'
    b'[{"componentType":"datastore","status":"pass","time":"2026-01-01T00:00:00Z",'
    b'"observedValue":0.42,"observedUnit":"ms"}]}}'
)
CONTENT_TYPE: Final = "application/health+json"


def create_app(body: bytes) -> web.Application:
    headers = {"Cache-Control": "no-store"}

    async def ready(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=CONTENT_TYPE, headers=headers)

    app = web.Application()
    app.router.add_get("/ready", ready)
    app.router.add_get("/health", ready)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.bare_app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body-file", type=Path)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop's event loop")
    args = parser.parse_args(argv)
    body = args.body_file.read_bytes() if args.body_file else DEFAULT_BODY
    loop = None
    if args.uvloop:
        import uvloop  # noqa: PLC0415 - only when asked for

        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
    web.run_app(
        create_app(body),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        loop=loop,
    )


if __name__ == "__main__":
    main()
