"""The process's pub/sub under Redis Cluster: one sharded subscription per primary node.

Classic `PUBLISH` on a cluster is broadcast to every node (each pays for every message); sharded
pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis 7) is handled only by the node owning the channel's slot.
So each channel is subscribed on the node owning its slot, through one `Subscription(sharded=True)`
per primary node (its own connection), and each of those has a heartbeat channel whose hash tag
puts it on that node's slots: a node's subscription is proven by heartbeats that travel through it.
`check()` fails when any node's subscription is down or silent.

Channels are routed with the cluster client's slot map, read once at `run()`: a resharding (slots
moving between nodes) or a primary replaced by its replica needs the instance restarted (its
`/readyz` fails meanwhile, as that node's heartbeats stop; see docs/capacity.md). Channels subscribed
before `run()` are kept and subscribed when it starts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
import anyio.abc
import redis.asyncio as redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

from realtime.redis.connection import retrying
from realtime.redis.pubsub import Handler, Subscription

__all__ = ["ShardedSubscription", "tag_for_node"]

logger = logging.getLogger(__name__)

#: How long the slot map may take to read at start (Redis away: retried meanwhile).
_INITIALIZE_S = 60.0
#: Hash tags tried to find one on a node's slots (16384 slots, a node holds a third: found at once).
_TAG_TRIES = 1 << 16


def tag_for_node(client: RedisCluster, node: ClusterNode) -> str:
    """A hash tag whose slot the node serves (for its heartbeat channel)."""
    slots = client.nodes_manager.slots_cache
    for n in range(_TAG_TRIES):
        tag = f"n{n}"
        owners = slots.get(key_slot(tag.encode()))
        if owners and owners[0].name == node.name:
            return tag
    raise RuntimeError(f"no slot of node {node.name} found")


class ShardedSubscription:
    """Same contract as `Subscription` (subscribe, unsubscribe, check, run, aclose, round_trip_s)."""

    def __init__(
        self, client: RedisCluster, *, heartbeat: Callable[[str], str], on_established: Callable[[], None]
    ) -> None:
        self._client = client
        self._heartbeat = heartbeat
        self._on_established = on_established
        self._handlers: dict[str, Handler] = {}
        #: By node name, once `run()` read the slot map.
        self._nodes: dict[str, Subscription] = {}
        self._scope: anyio.CancelScope | None = None

    @property
    def round_trip_s(self) -> float | None:
        trips = [s.round_trip_s for s in self._nodes.values() if s.round_trip_s is not None]
        return max(trips) if trips else None

    def _node_of(self, channel: str) -> Subscription | None:
        owners = self._client.nodes_manager.slots_cache.get(key_slot(channel.encode()))
        return None if not owners else self._nodes.get(owners[0].name)

    async def subscribe(self, channel: str, handler: Handler) -> None:
        self._handlers[channel] = handler
        node = self._node_of(channel)
        if node is not None:
            await node.subscribe(channel, handler)

    async def unsubscribe(self, channel: str) -> None:
        self._handlers.pop(channel, None)
        node = self._node_of(channel)
        if node is not None:
            await node.unsubscribe(channel)

    def check(self) -> None:
        if not self._nodes:
            raise RuntimeError("the sharded pub/sub subscriptions are not set up")
        for name, node in self._nodes.items():
            try:
                node.check()
            except RuntimeError as exc:
                raise RuntimeError(f"node {name}: {exc}") from None

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await retrying(self._client.initialize, _INITIALIZE_S)
        clients: list[redis.Redis] = []
        try:
            async with anyio.create_task_group() as tg:
                self._scope = tg.cancel_scope
                for node in self._client.get_primaries():
                    pool = redis.ConnectionPool(connection_class=node.connection_class, **node.connection_kwargs)
                    node_client = redis.Redis(connection_pool=pool)
                    clients.append(node_client)
                    self._nodes[node.name] = Subscription(
                        node_client, heartbeat=self._heartbeat(tag_for_node(self._client, node)),
                        on_established=self._on_established, sharded=True,
                    )
                for channel, handler in list(self._handlers.items()):
                    node = self._node_of(channel)
                    if node is not None:
                        await node.subscribe(channel, handler)
                for subscription in self._nodes.values():
                    await tg.start(subscription.run)
                task_status.started()
        finally:
            with anyio.CancelScope(shield=True):
                for node_client in clients:
                    await node_client.aclose()

    async def aclose(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
