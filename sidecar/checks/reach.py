"""Is anything listening? A TCP connect (or a Unix socket's), closed at once, nothing sent.

What the check loop asks while a database is unreachable at the TCP level, about once a second, so
that it can run the full check the moment a host accepts again instead of waiting out a backoff
delay. A refused connect costs the database nothing; an accepted one costs a fork of a backend
that sees end-of-file before any startup packet and exits without a log line (PostgreSQL 12+):
no login, no authentication, no session.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Final

# Where the DSN gives no port, libpq's.
DEFAULT_PORT: Final = 5432

# A host as `sidecar.checks.postgres` lists them: (name or address, port), or (socket path,
# None) for a Unix socket.
Address = tuple[str, int | None]


async def accepts_any(addresses: Sequence[Address], within: float) -> bool:
    """True as soon as one of `addresses` accepts a connection; False when none does within
    `within` seconds (refused, reset, unreachable, no answer, a name that does not resolve)."""
    if not addresses:
        return False
    attempts = [asyncio.ensure_future(_accepts(address)) for address in addresses]
    try:
        async with asyncio.timeout(within):
            for attempt in asyncio.as_completed(attempts):
                if await attempt:
                    return True
    except TimeoutError:
        return False
    finally:
        for attempt in attempts:
            attempt.cancel()
        # Reap the cancelled attempts, so that none outlives the probe with a socket open.
        await asyncio.gather(*attempts, return_exceptions=True)
    return False


async def _accepts(address: Address) -> bool:
    host, port = address
    try:
        if port is None:
            _, writer = await asyncio.open_unix_connection(host)
        else:
            _, writer = await asyncio.open_connection(host, port or DEFAULT_PORT)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
