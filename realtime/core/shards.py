"""Lease shards: which shard a project's lease lives in, and which live instance sweeps each shard.

The leases of all projects are spread over `LEASE_SHARDS` shards (sorted sets of deadlines, see
realtime/cluster/leases.py), a project's shard fixed by a hash of its id. Each shard is swept by one
live instance, chosen by rendezvous (highest-random-weight) hashing over the live instances: when
an instance comes or goes only the shards it wins or held move, and every instance computes the
same answer from the same list without talking to the others. Two instances that briefly disagree
(one saw a newcomer, the other not yet) both sweep a shard for a round: harmless, since a claim is
atomic.

Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Sequence

__all__ = ["LEASE_SHARDS", "affinity_owner", "shard_of", "shards_of"]

#: Shards of the lease index. Changing it re-homes every lease: it is a constant of a deployment.
#: A round's renewal is one script per shard holding a lease of the instance (each costs Redis a
#: fixed overhead, docs/capacity.md), and a cluster of up to this many nodes gets shards on each.
LEASE_SHARDS = 16


def shard_of(project_id: str, shards: int = LEASE_SHARDS) -> int:
    """The shard a project's lease (and its place in the workspace list) lives in."""
    return zlib.crc32(project_id.encode()) % shards


def _weight(key: str, instance: str) -> bytes:
    return hashlib.blake2b(f"{key}\0{instance}".encode(), digest_size=8).digest()


def _winner(key: str, instances: Sequence[str]) -> str:
    return max(instances, key=lambda instance: _weight(key, instance))


def shards_of(instance: str, live: Iterable[str], shards: int = LEASE_SHARDS) -> list[int]:
    """The shards `instance` sweeps among the `live` instances (itself counted live)."""
    everyone = sorted({*live, instance})
    return [shard for shard in range(shards) if _winner(f"shard:{shard}", everyone) == instance]


def affinity_owner(project_id: str, live: Iterable[str]) -> str | None:
    """The live instance a project's viewers should gather on (rendezvous over `live`); None if none."""
    everyone = sorted(set(live))
    return _winner(f"project:{project_id}", everyone) if everyone else None
