"""The TCP check: a connection to host:port is opened, then closed. Nothing is sent."""

from __future__ import annotations

import asyncio

from sidecar.checks.failures import SOCKET, close_within, failures_as_reasons
from sidecar.checkspec import TcpSpec


class TcpCheck:
    """Holds nothing between runs: each run is one connect and one close."""

    def __init__(self, spec: TcpSpec) -> None:
        self._spec = spec

    @property
    def name(self) -> str:
        return self._spec.name

    async def run(self) -> None:
        with failures_as_reasons(SOCKET):
            _, writer = await asyncio.open_connection(self._spec.host, self._spec.port)
        # The connection was made, which is all this check asks; a peer that stalls the
        # close (FIN) must not hold the run.
        writer.close()
        await close_within(writer.wait_closed(), writer.transport.abort)

    async def reset(self) -> None:
        """Nothing is kept between runs, so there is nothing to drop."""

    async def close(self) -> None:
        """Nothing is kept between runs, so there is nothing to release."""
