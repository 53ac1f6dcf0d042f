"""`health-sidecar probe ready|health|startup`: an exec probe with no curl in the image.

Standard library only, so the probe starts fast and cannot be broken by the server's deps.
"""

from __future__ import annotations

import http.client
import ipaddress


def connect_host(host: str) -> str:
    """The address to dial for a listen address: a wildcard means this machine.

    IPv4 loopback for `::` too: the server's `::` socket takes IPv4 as well, and falls back to
    IPv4 only where the kernel has no IPv6, where `::1` would not answer."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    return "127.0.0.1" if address.is_unspecified else str(address)


def probe(endpoint: str, *, host: str, port: int, timeout: float) -> tuple[bool, str]:
    """GET the endpoint; (True, detail) on 200, (False, detail) on anything else."""
    conn = http.client.HTTPConnection(connect_host(host), port, timeout=timeout)
    try:
        conn.request("GET", f"/{endpoint}", headers={"User-Agent": "health-sidecar-probe"})
        response = conn.getresponse()
        response.read(64 * 1024)
    except TimeoutError:
        return False, f"{endpoint}: timed out after {timeout:g}s"
    except OSError as exc:
        return False, f"{endpoint}: {exc.strerror or type(exc).__name__}"
    except http.client.HTTPException as exc:
        return False, f"{endpoint}: bad HTTP answer ({type(exc).__name__})"
    finally:
        conn.close()
    return response.status == 200, f"{endpoint}: {response.status}"
