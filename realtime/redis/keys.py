"""Every Redis key and channel name of the service, and nowhere else (like arq's `constants.py`).

Per-project names are hash-tagged (`<prefix>:{<project>}:…`) so that Redis Cluster keeps a project's
keys on one slot, which its Lua scripts need:

- `…:seq` the latest seq, `…:epoch` the log's incarnation, `…:log` the stream of encoded frames
  (entries `<seq>-0`, their fields in realtime/log/stream.py);
- channel `…:events`: every append, published as `<epoch> <frame>`;
- channel `…:commands` the ops sent to the owner;
- `…:workspace` the registry entry (the owner's snapshot of the workspace);
- `…:revocations` the revocation generations (a hash: `preview`, `session`), kept without a TTL;
- `…:seen` someone viewed or used the project lately (on any instance): its age is read off its TTL.

Lease shards (`realtime.core.shards`: a project's shard is a hash of its id), each one slot
`<prefix>:{shard-<n>}:…`: `leases` (sorted set: instance → the deadline of its leases on the shard,
ms of Redis time), `owners` (hash: project → the instance holding its lease), `held:<instance>`
(set: the projects that instance holds there), `workspaces` (the set of projects not stopped, so
the list is scanned shard by shard). `<prefix>:instances` (sorted set: live instance →
the deadline of its presence) tells which instance sweeps which shard.

Shared names: channel `<prefix>:reply:<instance>`
(answers to the ops an instance forwarded), channel `<prefix>:heartbeat:<instance>` (proves an
instance's subscription still delivers), `<prefix>:preview:<key>` (the project a preview hostname's
key names), the outbound webhook queue under `<prefix>:{webhooks}:` (`due`, `deliveries`, `dead`,
`dead-order`; one slot, for its Lua scripts) and `<prefix>:webhooks:inbound:<id>` (inbound ids applied).
Presence: `…:{p}:presence` (a project's viewers), `<prefix>:presence:instances` (presence leases) and
`<prefix>:presence:viewers:<instance>` (an instance's viewers).
"""

from __future__ import annotations

__all__ = ["RedisKeys"]


class RedisKeys:
    """The names under one prefix (`WORKSPACE_REDIS_PREFIX`)."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    # -- one project's (one hash slot) ----------------------------------------------------------

    def _project(self, project_id: str, name: str) -> str:
        return f"{self.prefix}:{{{project_id}}}:{name}"

    def log(self, project_id: str) -> tuple[str, str, str]:
        """The project's seq counter, epoch and stream, in the order the append script takes them."""
        return self._project(project_id, "seq"), self._project(project_id, "epoch"), self._project(project_id, "log")

    def events(self, project_id: str) -> str:
        """The channel each append is published on."""
        return self._project(project_id, "events")

    def commands(self, project_id: str) -> str:
        """The channel the owner takes ops on."""
        return self._project(project_id, "commands")

    def workspace(self, project_id: str) -> str:
        """The registry entry."""
        return self._project(project_id, "workspace")

    def revocations(self, project_id: str) -> str:
        """The project's revocation generations (a hash of counters; never expires)."""
        return self._project(project_id, "revocations")

    def seen(self, project_id: str) -> str:
        """Set with a TTL of `WORKSPACE_IDLE_S` when the project is viewed or used (see `workspaces/activity.py`)."""
        return self._project(project_id, "seen")

    # -- shared -----------------------------------------------------------------------------------

    def _shard(self, shard: int, name: str) -> str:
        return f"{self.prefix}:{{shard-{shard}}}:{name}"

    def leases(self, shard: int) -> tuple[str, str]:
        """The shard's lease deadlines (sorted set) and lease holders (hash), in the scripts' order."""
        return self._shard(shard, "leases"), self._shard(shard, "owners")

    def held(self, shard: int) -> str:
        """The prefix of the shard's sets of projects by holder (`<prefix><instance>`; scripts add the instance)."""
        return self._shard(shard, "held:")

    def active(self, shard: int) -> str:
        """The shard's set of projects whose workspace is not stopped."""
        return self._shard(shard, "workspaces")

    @property
    def instances(self) -> str:
        """Live instances by the deadline of their presence (a sorted set)."""
        return f"{self.prefix}:instances"

    def reply(self, instance: str) -> str:
        """The channel an instance hears the answers to its forwarded ops on."""
        return f"{self.prefix}:reply:{instance}"

    def heartbeat(self, instance: str, tag: str | None = None) -> str:
        """An instance's heartbeat channel; under Redis Cluster one per node, `tag` picking its slot."""
        base = f"{self.prefix}:heartbeat:{instance}"
        return base if tag is None else f"{base}:{{{tag}}}"

    def preview(self, project_key: str) -> str:
        """Which project a preview hostname's project key names."""
        return f"{self.prefix}:preview:{project_key}"

    @property
    def webhooks_due(self) -> str:
        """Outbound deliveries by due time (a sorted set)."""
        return f"{self.prefix}:{{webhooks}}:due"

    @property
    def webhooks_deliveries(self) -> str:
        """Outbound deliveries by id (a hash of JSON records)."""
        return f"{self.prefix}:{{webhooks}}:deliveries"

    @property
    def webhooks_dead(self) -> str:
        """Dead letters by id (a hash)."""
        return f"{self.prefix}:{{webhooks}}:dead"

    @property
    def webhooks_dead_order(self) -> str:
        """Dead letters by when they died (a sorted set; the oldest are dropped)."""
        return f"{self.prefix}:{{webhooks}}:dead-order"

    def webhook_inbound(self, webhook_id: str) -> str:
        """Remembers that an inbound webhook id was applied."""
        return f"{self.prefix}:webhooks:inbound:{webhook_id}"

    # -- presence (issue 17; realtime/cluster/presence_redis.py) ---------------------------------

    def presence(self, project_id: str) -> str:
        """The project's viewers: a hash of connection id → `Viewer` record (JSON)."""
        return self._project(project_id, "presence")

    @property
    def presence_instances(self) -> str:
        """Instances with viewers, by the deadline of their presence lease (a sorted set, unix ms)."""
        return f"{self.prefix}:presence:instances"

    def presence_viewers(self, instance: str) -> str:
        """The viewers an instance serves: a set of `<project> <connection id>` (for the sweep)."""
        return f"{self.prefix}:presence:viewers:{instance}"
