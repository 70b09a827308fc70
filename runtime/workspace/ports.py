"""The ports a workspace listens on, announced as `port` events with a signed preview URL each.

Invariants:
- `open` holds exactly the ports announced `open` and not yet `closed`; every change of the
  sandbox's set (`runtime.base.PortScan`) is announced, openings then closings, by port number.
- An origin is handed out only for a port in `open`: the gateway can never be sent to a port the
  workspace does not listen on (the label's port is checked here, after its MAC).
- Without the capability (a sandbox that cannot list its ports) nothing is announced.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from runtime import events
from runtime.base import PortScan, Sandbox
from runtime.errors import RuntimeFailure
from runtime.events import Emit, EventKind

__all__ = ["Ports", "ServesPorts", "SignPort"]

#: Signs a preview of one port: the `url` and `expires_at` of its `port` event.
SignPort = Callable[[int], Mapping[str, Any]]


class Ports:
    """Follows `sandbox`'s listening ports (`follow` runs until cancelled) and announces them through `emit`."""

    def __init__(self, sandbox: Sandbox, emit: Emit, sign: SignPort) -> None:
        self._sandbox = sandbox
        self._emit = emit
        self._sign = sign
        #: The open ports by number: the data of each one's latest `open` event.
        self.open: dict[int, dict[str, Any]] = {}

    async def follow(self) -> None:
        if isinstance(self._sandbox, PortScan):
            await self._sandbox.follow_ports(self._changed)

    async def _changed(self, ports: frozenset[int]) -> None:
        for port in sorted(ports - self.open.keys()):
            signed = self._sign(port)
            self.open[port] = events.port_opened(port, signed["url"], signed["expires_at"])
            await self._emit(EventKind.port, self.open[port])
        for port in sorted(self.open.keys() - ports):
            del self.open[port]
            await self._emit(EventKind.port, events.port_closed(port))

    def snapshot(self) -> list[dict[str, Any]]:
        """The open ports, as their `open` events said (lowest port first)."""
        return [self.open[port] for port in sorted(self.open)]

    def resign(self, port: int) -> dict[str, Any] | None:
        """A freshly signed URL of an open port (its snapshot entry too); None if it is not open."""
        if port not in self.open:
            return None
        signed = self._sign(port)
        self.open[port] = events.port_opened(port, signed["url"], signed["expires_at"])
        return self.open[port]

    async def origin(self, port: int) -> str | None:
        """Where the gateway reaches an open port; None for any port that is not open (or not reachable)."""
        if port not in self.open:
            return None
        try:
            return await self._sandbox.preview_origin(port)
        except RuntimeFailure:
            return None  # closed meanwhile, or its tunnel is gone

    async def origins(self) -> dict[str, str]:
        """Every open port's origin, by port number as text (for the registry, read by other instances)."""
        found = {str(port): await self.origin(port) for port in sorted(self.open)}
        return {port: origin for port, origin in found.items() if origin is not None}


class ServesPorts:
    """What a workspace answers about its open ports (mixed into `lifecycle.Workspace`)."""

    _ports: Ports | None

    async def port_origin(self, port: int) -> str | None:
        """Where an open port of the workspace is served; None for any port not open (issue 17)."""
        return await self._ports.origin(port) if self._ports is not None else None

    async def port_origins(self) -> dict[str, str]:
        """Every open port's origin by port number (as text)."""
        return await self._ports.origins() if self._ports is not None else {}

    def resign_port(self, port: int) -> dict[str, Any] | None:
        """A freshly signed URL of an open port; None if the workspace does not listen on it."""
        return self._ports.resign(port) if self._ports is not None else None
