"""A way in for the preview gateway to one port of a workspace's network namespace.

pasta forwards only the dev port (`runtime.local.network`); every other port the workspace
listens on gets a `NetnsForward`: a listener on the host's 127.0.0.1 (a port the OS picks) whose
every connection is relayed to `host:port` connected from inside the namespace. The inner socket
is made by a thread of its own that enters the namespace (`setns`) and ends right after, so no
thread of the server is ever left in a workspace's namespace. Because the connection is made
inside the namespace, it reaches only what the workspace itself listens on: never the host's
loopback (the service, Redis) nor another workspace.

Bounded: at most `MAX_CONNECTIONS` relayed connections per forward (more are closed at once),
`_CHUNK` bytes read at a time each way, `CONNECT_TIMEOUT_S` per inner connect.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.abc
from anyio.abc import SocketAttribute, SocketStream

__all__ = ["CONNECT_TIMEOUT_S", "MAX_CONNECTIONS", "NetnsForward", "connect_in_netns", "in_netns"]

T = TypeVar("T")

CONNECT_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 64
_CHUNK = 64 * 1024
_CLONE_NEWNET = 0x40000000


def _enter(ns_path: str) -> None:
    """Move the calling thread into the network namespace at `ns_path` (for good: the thread then ends)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"cannot enter the workspace's network: {os.strerror(code)}")
    finally:
        os.close(fd)


def in_netns(ns_path: str, make: Callable[[], T]) -> T:
    """`make()` run by a thread of its own inside the network namespace at `ns_path` (blocking);
    sockets it makes belong to that namespace. The thread ends right after.

    Raises:
        OSError: the namespace could not be entered; whatever `make` raised.
    """
    result: list[Any] = []

    def work() -> None:
        try:
            _enter(ns_path)
            result.append(make())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread below
            result.append(exc)

    thread = threading.Thread(target=work, name="netns", daemon=True)
    thread.start()
    thread.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    made: T = result[0]
    return made


def _connect(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT_S)
        sock.connect((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def connect_in_netns(ns_path: str, host: str, port: int) -> socket.socket:
    """A socket connected to `host:port` inside the network namespace at `ns_path` (blocking).

    Raises:
        OSError: the namespace could not be entered, or nothing answered there.
    """
    return in_netns(ns_path, lambda: _connect(host, port))


class NetnsForward:
    """One forward: `origin` (on the host) reaches `host:port` inside the namespace. See the module doc."""

    def __init__(self, listener: anyio.abc.SocketListener, ns_path: str, host: str, port: int) -> None:
        self._listener = listener
        self._ns_path = ns_path
        self._host = host
        self._port = port
        self._slots = anyio.Semaphore(MAX_CONNECTIONS)
        self._scope = anyio.CancelScope()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self._listener.extra(SocketAttribute.local_port)}"

    @classmethod
    async def serve(cls, ns_path: str, host: str, port: int, *,
                    task_status: anyio.abc.TaskStatus[NetnsForward] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen and relay until `close()`; the forward is handed to `task_status` once it listens.

        Raises:
            OSError: no host port could be listened on.
        """
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        forward = cls(listener.listeners[0], ns_path, host, port)
        async with listener:
            with forward._scope:
                task_status.started(forward)
                await listener.serve(forward._relay)

    def close(self) -> None:
        """Stop listening and end every relayed connection."""
        self._scope.cancel()

    async def _relay(self, client: SocketStream) -> None:
        async with client:
            if self._slots.value == 0:
                return  # over the bound: closed at once
            async with self._slots:
                try:
                    sock = await anyio.to_thread.run_sync(connect_in_netns, self._ns_path, self._host, self._port)
                except OSError:
                    return  # nothing listens there (any more): the gateway answers "not running"
                inner = await SocketStream.from_socket(sock)
                async with inner, anyio.create_task_group() as tg:
                    tg.start_soon(_pipe, client, inner)
                    tg.start_soon(_pipe, inner, client)


async def _pipe(source: SocketStream, sink: SocketStream) -> None:
    """Copy `source` to `sink` until its end, then half-close `sink`."""
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError):
        while True:
            try:
                chunk = await source.receive(_CHUNK)
            except anyio.EndOfStream:
                break
            await sink.send(chunk)
        await sink.send_eof()
