"""The tcp kind: a connection to host:port is opened, then closed. Nothing is sent."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal

from sidecar.checks.failures import SOCKET, close_within, failures_as_reasons
from sidecar.checkspec import CheckSpec, DatabaseTarget
from sidecar.fields import Fields, is_host, is_port, number_schema
from sidecar.kinds import Built, Key, Kind
from sidecar.options import PORT, PORT_RULE


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpSpec(CheckSpec):
    kind: ClassVar[Literal["tcp"]] = "tcp"
    host: str
    port: int


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


def _parse(fields: Fields, common: dict[str, Any], _database: DatabaseTarget) -> TcpSpec | None:
    missing = "missing; a tcp check needs one"
    host = fields.read("host", is_host, "must be a host name or address", missing=missing)
    port = fields.read("port", is_port, PORT_RULE, missing=missing)
    if host is None or port is None:
        return None
    return TcpSpec(**common, host=host, port=port)


KIND: Final[Kind[TcpSpec]] = Kind(
    name="tcp",
    keys=(
        Key(
            "host",
            {
                "type": "string",
                "description": "Host to connect to",
                "minLength": 1,
                "pattern": r"^[^\s/\x00-\x1f\x7f]+$",
            },
            required=True,
        ),
        Key("port", {**number_schema(PORT), "description": "TCP port"}, required=True),
    ),
    parse=_parse,
    build=lambda spec, _needs: Built(TcpCheck(spec)),
    loader_only=("a host name the resolver cannot encode (an empty or 64+ character label)",),
)
