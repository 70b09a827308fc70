"""Connecting to Redis, and riding out its short outages: one pool shape, one retry rule.

`REDIS_URL` is whatever redis-py takes: `redis://`, `rediss://` (TLS; `?ssl_ca_certs=…`,
`ssl_certfile`, `ssl_keyfile`, `ssl_cert_reqs` in its query), `unix://`, with an ACL user and
password (`rediss://user:password@host:6380/0`; percent-encode `@ : / ? #` in a password). The URL
is handed to redis-py as it is, never rebuilt, and shown only masked (`mask_url`): a malformed one
is refused with a message that names no part of its password.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import redis.asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from realtime.config.masking import mask_url
from realtime.core.errors import BrokerUnavailable
from runtime.backoff import Backoff

__all__ = [
    "MAX_CONNECTIONS", "RETRY_BACKOFF", "TRANSIENT", "check_url", "close_client", "connect", "preload", "retrying",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Errors after which a command is tried again (the connection is re-established on the way).
TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError)
#: Connections one process opens to Redis at most; beyond, callers wait for one (never an error).
MAX_CONNECTIONS = 64
#: Between tries of a command, and between rebuilds of the subscription.
RETRY_BACKOFF = Backoff(first=0.05, cap=2.0)


def _pool(url: str, **options: object) -> redis.BlockingConnectionPool:
    """The pool for `url`; refuses at once (no I/O) what redis-py would refuse at the first connection.

    Raises:
        ValueError: the URL does not parse, or its query holds an option its scheme does not take.
            The message shows the URL masked and never the parser's own words (they may quote the password).
    """
    try:
        pool = redis.BlockingConnectionPool.from_url(url, **options)  # type: ignore[arg-type]
        pool.connection_class(**pool.connection_kwargs)  # builds, does not connect
    except (ValueError, TypeError) as exc:
        what = "an option its scheme does not take" if isinstance(exc, TypeError) else "a part that does not parse"
        raise ValueError(
            f"REDIS_URL {mask_url(url)} has {what} (ssl_* options need rediss://; percent-encode"
            " '@ : / ? #' in a password)"
        ) from None
    return pool


def check_url(url: str) -> None:
    """Raise ValueError (saying why, password masked) if redis-py cannot use `url`."""
    _pool(url)


def connect(url: str, *, client_name: str | None = None, cluster: bool = False) -> redis.Redis:
    """A client whose pool makes callers wait for a free connection instead of failing when busy
    (a thousand rooms joining at once must not be a thousand connections, nor errors).

    `cluster=True` (`REDIS_CLUSTER=1`): `url` names any node of a Redis Cluster, and the client is
    redis-py's cluster client (`redis.asyncio.cluster.RedisCluster`: it learns the slot map from that
    node and sends each command to the node owning its keys; `MAX_CONNECTIONS` per node). Its
    interface is the plain client's for every command this service sends.

    Raises:
        ValueError: `url` is malformed (see `check_url`).
    """
    if cluster:
        check_url(url)
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(  # type: ignore[return-value]
            url, max_connections=MAX_CONNECTIONS, socket_connect_timeout=2, socket_timeout=10,
            client_name=client_name,
        )
    pool = _pool(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=10,
        socket_connect_timeout=2,
        socket_timeout=10,
        client_name=client_name,
    )
    return redis.Redis(connection_pool=pool)


async def close_client(client: redis.Redis) -> None:
    """Close a client of `connect`: its pool's connections (plain), or every node's (cluster)."""
    pool = getattr(client, "connection_pool", None)
    if pool is None:
        await client.aclose()
    else:
        await pool.disconnect()


async def preload(client: redis.Redis, *scripts: str) -> None:
    """Under Redis Cluster, load `scripts` on every primary before first use: redis-py's async cluster
    client (8.1) breaks connections when many calls recover from `NOSCRIPT` at once. No-op on one Redis."""
    from redis.asyncio.cluster import RedisCluster

    if isinstance(client, RedisCluster):
        for script in scripts:
            await client.script_load(script)


async def retrying(fn: Callable[[], Awaitable[T]], retry_s: float) -> T:
    """Call `fn`, retrying connection failures with `RETRY_BACKOFF` for `retry_s` seconds.

    An append whose reply was lost may be applied twice: delivery is at-least-once across outages.

    Raises:
        BrokerUnavailable: Redis stayed unreachable for `retry_s`.
    """
    deadline = time.monotonic() + retry_s
    attempt = 0
    while True:
        try:
            return await fn()
        except TRANSIENT as exc:
            if time.monotonic() + RETRY_BACKOFF.bare(attempt) > deadline:
                raise BrokerUnavailable(f"redis unreachable for {retry_s:g}s: {exc}") from exc
            delay = RETRY_BACKOFF.delay(attempt)
            logger.warning("redis unavailable (%s); retrying in %.2fs", exc, delay)
            await anyio.sleep(delay)
            attempt += 1
