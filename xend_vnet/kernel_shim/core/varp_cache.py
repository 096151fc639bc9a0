"""The VARP cache: (vnet, MAC) -> care-of IPv4 of a remote host (protocol.md 3.5).

Era C learns from every accepted data frame and announce and floods what it
does not know; it never resolves actively.  A lookup miss for a unicast
frame leaves an INCOMPLETE entry (listed like legacy) that does not refresh
its timestamp.  Entries age out when older than the TTL at a sweep, so a
MAC lives TTL to TTL + sweep interval after its last frame.
"""

from __future__ import annotations

from collections.abc import Iterator

INCOMPLETE = 1
REACHABLE = 2
FAILED = 3
STATE_NAMES = {INCOMPLETE: "incomplete", REACHABLE: "reachable", FAILED: "failed"}

Key = tuple[bytes, bytes]   # (16-byte vnet id, 6-byte MAC)


class VarpEntry:
    """One cache entry; mutable so a refresh is an attribute store."""

    __slots__ = ("addr", "state", "timestamp")

    def __init__(self, addr: str | None, state: int, timestamp: float):
        self.addr = addr
        self.state = state
        self.timestamp = timestamp


class VarpCache:
    # Bounds between sweeps: INCOMPLETE entries made by lookups (a local
    # domain sending to random MACs) and all entries (frames from random
    # source MACs).  Past them nothing new is cached: such traffic floods.
    MAX_INCOMPLETE = 4096
    MAX_ENTRIES = 65536

    def __init__(self) -> None:
        self._entries: dict[Key, VarpEntry] = {}
        self._incomplete = 0

    def __len__(self) -> int:
        return len(self._entries)

    def learn(self, vnet: bytes, mac: bytes, addr: str, now: float) -> bool:
        """Set (vnet, mac) REACHABLE at ``addr``; True when new or moved."""
        entry = self._entries.get((vnet, mac))
        if entry is None:
            if len(self._entries) >= self.MAX_ENTRIES:
                return False
            self._entries[(vnet, mac)] = VarpEntry(addr, REACHABLE, now)
            return True
        entry.timestamp = now
        if entry.addr == addr and entry.state == REACHABLE:
            return False
        if entry.state == INCOMPLETE:
            self._incomplete -= 1
        entry.addr = addr
        entry.state = REACHABLE
        return True

    def resolve(self, vnet: bytes, mac: bytes, now: float) -> str | None:
        """The address to tunnel a unicast frame to, None to flood it."""
        entry = self._entries.get((vnet, mac))
        if entry is None:
            if self._incomplete < self.MAX_INCOMPLETE and len(self._entries) < self.MAX_ENTRIES:
                self._entries[(vnet, mac)] = VarpEntry(None, INCOMPLETE, now)
                self._incomplete += 1
            return None
        return entry.addr if entry.state == REACHABLE else None

    def get(self, vnet: bytes, mac: bytes) -> VarpEntry | None:
        return self._entries.get((vnet, mac))

    def forget(self, vnet: bytes, mac: bytes) -> bool:
        entry = self._entries.pop((vnet, mac), None)
        if entry is not None and entry.state == INCOMPLETE:
            self._incomplete -= 1
        return entry is not None

    def sweep(self, now: float, ttl: float) -> int:
        """Remove entries older than ``ttl`` (strictly); the count removed."""
        old = [k for k, e in self._entries.items() if now - e.timestamp > ttl]
        for k in old:
            self.forget(*k)
        return len(old)

    def flush(self) -> None:
        """varp.flush: every entry goes (none is probing or permanent in era C)."""
        self._entries.clear()
        self._incomplete = 0

    def remove_vnet(self, vnet: bytes) -> None:
        for k in [k for k in self._entries if k[0] == vnet]:
            self.forget(*k)

    def entries(self) -> Iterator[tuple[bytes, bytes, VarpEntry]]:
        """(vnet, mac, entry) sorted by vnet then MAC, for listings."""
        for (vnet, mac), entry in sorted(self._entries.items(), key=lambda kv: kv[0]):
            yield vnet, mac, entry
