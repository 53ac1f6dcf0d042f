"""The seed baseline: the in-app health check the sidecar replaces.

A FastAPI app on uvicorn whose /health runs `SELECT 1` on its SQLAlchemy async (asyncpg) pool for
every request, as the glucolens deployment notes describe (Iteration 2): 200 with
"database": "connected", or 503 with the exception's class name. Startup waits for the database
with exponential backoff (Iteration 1). Kept faithful on purpose: it is the thing being measured.

    BASELINE_DATABASE_URL=postgresql://... python -m bench.baseline_app --port 8000
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

logger = logging.getLogger("baseline")

SERVICE: Final = {
    "service": "glucolens-backend",
    "version": "2.0.0",
    "features": ["authentication", "advanced-ml", "real-time-alerts"],
}
STARTUP_ATTEMPTS: Final = 5


def async_url(url: str) -> str:
    """postgresql://... -> postgresql+asyncpg://... (what SQLAlchemy wants for asyncpg)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


def create_app(engine: AsyncEngine) -> FastAPI:
    async def wait_for_database() -> None:
        # The notes' tenacity retry, spelled out: 5 tries, waits 0, 2, 4, 8 s.
        for attempt in range(STARTUP_ATTEMPTS):
            try:
                async with engine.begin() as conn:
                    await conn.execute(text("SELECT 1"))
            except Exception:
                if attempt == STARTUP_ATTEMPTS - 1:
                    raise
                logger.warning("database not ready, retrying (attempt %d)", attempt + 1)
                await asyncio.sleep(2**attempt if attempt else 0)
            else:
                return

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await wait_for_database()
        yield
        await engine.dispose()

    app = FastAPI(lifespan=lifespan)

    @app.get("/health", response_model=None)
    async def health_check() -> dict[str, Any] | JSONResponse:
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - the seed answers 503 for any failure, as shipped
            logger.warning("health check failed: %s", type(exc).__name__)
            return JSONResponse(
                status_code=503,
                content={
                    **SERVICE,
                    "database": "disconnected",
                    "status": "unhealthy",
                    "error": type(exc).__name__,
                },
            )
        return {**SERVICE, "database": "connected", "status": "healthy"}

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.baseline_app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    url = os.environ["BASELINE_DATABASE_URL"]
    # SQLAlchemy's defaults (pool_size=5, max_overflow=10), as an app that never tuned them has.
    engine = create_async_engine(async_url(url))
    uvicorn.run(
        create_app(engine),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
