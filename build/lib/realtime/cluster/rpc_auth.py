"""Who may speak the owner RPC, sans I/O: only instances holding the signing key.

Anyone who can PUBLISH to Redis could otherwise run ops on any project's owner. So every message is
signed (`keys.MessageAuth` under the signing key's `owner-rpc` subkey; the first key signs, every
listed key verifies, so keys rotate), and the signature binds it to where it goes:

- a request to the project it is for (`kind` "request", context the project id): signed for one
  project, it is refused on another's channel;
- a reply to the asker's reply channel (`kind` "reply", context that channel).

On the wire a message is `<tag>.<json>` (`MessageAuth`), the JSON as `rpc.py` has it; a request
carries `ts`, the unix milliseconds of its publication (the asker signs it anew each time it
publishes). The owner refuses, logs and counts, never runs:

- a request that does not verify (unsigned, another key, another project, altered): `bad_signature`;
- one whose `ts` is missing or more than `FRESH_MS` from the owner's clock: `stale` (so a captured
  request cannot be replayed later);
- within that window, an id `ReplayGuard` admitted before (the owner's memory of replies answers a
  repeat it still remembers, without running it; the guard refuses one it no longer does):
  `replayed`; and one no newer than an id the guard had to forget for room: `stale`.

The guard remembers at most `REPLAY_IDS` ids; it forgets ids older than the window first, freely
(their time refuses them), and the oldest otherwise, raising its floor to their time.
"""

from __future__ import annotations

import enum
from collections import OrderedDict

from realtime.core.keys import Keyring, MessageAuth

__all__ = ["FRESH_MS", "REPLAY_IDS", "Refusal", "ReplayGuard", "RpcAuth"]

#: How far (ms) a request's `ts` may be from the owner's clock: transit and clock skew between instances.
FRESH_MS = 30_000
#: Request ids the owner's guard remembers at most.
REPLAY_IDS = 16_384


class Refusal(enum.StrEnum):
    """Why a message was refused (the metric's `reason`)."""

    bad_signature = "bad_signature"
    stale = "stale"
    replayed = "replayed"
    malformed = "malformed"


class RpcAuth:
    """Signs and opens the owner RPC's messages with the keyring's `owner-rpc` subkeys."""

    def __init__(self, keyring: Keyring) -> None:
        self._auth = MessageAuth(keyring, "owner-rpc")

    def sign_request(self, project_id: str, body: bytes) -> bytes:
        return self._auth.sign("request", project_id, body)

    def open_request(self, project_id: str, payload: bytes) -> bytes | None:
        """The request's JSON, if it was signed for `project_id` by an instance; else None."""
        return self._auth.open("request", project_id, payload)

    def sign_reply(self, channel: str, body: bytes) -> bytes:
        return self._auth.sign("reply", channel, body)

    def open_reply(self, channel: str, payload: bytes) -> bytes | None:
        """The reply's JSON, if an instance signed it for `channel`; else None."""
        return self._auth.open("reply", channel, payload)


class ReplayGuard:
    """The owner's memory of the request ids it admitted within the freshness window (bounded)."""

    def __init__(self, *, window_ms: int = FRESH_MS, limit: int = REPLAY_IDS) -> None:
        if limit < 1:
            raise ValueError(f"expected a limit of at least 1, got {limit}")
        self._window_ms = window_ms
        self._limit = limit
        self._seen: OrderedDict[str, int] = OrderedDict()
        #: Every id forgotten for want of room had a `ts` at or below this.
        self._floor: int | None = None

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, call_id: str, ts: int | None, now_ms: int) -> Refusal | None:
        """None, and the id is remembered, if the request is fresh and new; else why it is refused."""
        if ts is None or abs(now_ms - ts) > self._window_ms:
            return Refusal.stale
        while self._seen:  # past the window: the time alone refuses them now
            oldest, oldest_ts = next(iter(self._seen.items()))
            if oldest_ts >= now_ms - self._window_ms:
                break
            del self._seen[oldest]
        if call_id in self._seen:
            return Refusal.replayed
        if self._floor is not None and ts <= self._floor:
            return Refusal.stale
        self._seen[call_id] = ts
        while len(self._seen) > self._limit:
            _, forgotten = self._seen.popitem(last=False)
            self._floor = forgotten if self._floor is None else max(self._floor, forgotten)
        return None
