"""The declared ports of a Modal sandbox that answer (`runtime.base.PortScan`, issue 17).

A Modal sandbox publishes only the ports it was created with (`encrypted_ports`: the dev port and
`ModalConfig.ports`: 3000 and 3010 by default), each through a tunnel the service never hands out.
A declared port counts as open while an HTTP request through its tunnel gets an answer that is
not the tunnel's own "nothing listens" (502, 503, 504). Bounded: one probe per declared port
every `_INTERVAL_S`, each within `_PROBE_TIMEOUT_S`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import anyio
import httpx

from runtime.base import MAX_PORTS, PortsChanged

__all__ = ["follow_declared_ports"]

_INTERVAL_S = 2.0
_PROBE_TIMEOUT_S = 5.0
_NOT_LISTENING = frozenset({502, 503, 504})


async def _answers(http: httpx.AsyncClient, origin: str) -> bool:
    try:
        response = await http.get(origin + "/", timeout=_PROBE_TIMEOUT_S)
    except httpx.HTTPError:
        return False
    await response.aclose()
    return response.status_code not in _NOT_LISTENING


async def follow_declared_ports(origins: Callable[[], Awaitable[Mapping[int, str]]], on_change: PortsChanged) -> None:
    """Until cancelled: probe each declared port's tunnel (`origins`: port → tunnel URL) and tell
    `on_change` the set of those that answer, whenever it changed."""
    last: frozenset[int] | None = None
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as http:
        while True:
            try:
                declared = dict(sorted((await origins()).items())[:MAX_PORTS])
            except Exception:  # noqa: BLE001 - the sandbox is away for now: nothing answers
                declared = {}
            ports = frozenset([port for port, origin in declared.items() if await _answers(http, origin)])
            if ports != last:
                last = ports
                await on_change(ports)
            await anyio.sleep(_INTERVAL_S)
