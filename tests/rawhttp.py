"""Bytes on a TCP socket, for the requests no HTTP client sends: partial heads, odd targets, idle sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@asynccontextmanager
async def raw_connection(port: int) -> AsyncIterator[anyio.abc.SocketStream]:
    """A plain TCP connection to the server on loopback."""
    stream = await anyio.connect_tcp("127.0.0.1", port)
    async with stream:
        yield stream


async def read_until_closed(stream: anyio.abc.SocketStream, within: float = 10) -> bytes:
    """Everything the server sends until it closes the connection (fails if it does not within `within` s)."""
    received = b""
    with anyio.fail_after(within):
        try:
            while True:
                received += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
            return received


async def exchange(port: int, request: bytes) -> bytes:
    """Send one request that asks to close the connection; return the whole response."""
    async with raw_connection(port) as stream:
        await stream.send(request)
        return await read_until_closed(stream)


def status_of(response: bytes) -> int:
    """The status code of a raw HTTP/1.1 response."""
    return int(response.split(b" ", 2)[1])


def body_of(response: bytes) -> bytes:
    return response.partition(b"\r\n\r\n")[2]
