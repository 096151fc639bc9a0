"""The VARP cache: (vnet, MAC) -> care-of IPv4 of a remote host (protocol.md 3.5).

Era C learns from every accepted data frame and announce and floods what it
does not know; it never resolves actively.  A lookup miss for a unicast
frame leaves an INCOMPLETE entry (listed like legacy) that does not refresh
its timestamp.  Entries age out when older than the TTL at a sweep, so a
MAC lives TTL to TTL + sweep interval after its last frame.

Bounded per vnet and per source (bounds.py, docs/security.md "Resource
limits"): past its bound a vnet learns nothing new (such traffic floods);
INCOMPLETE entries, made by a domain's lookups, count as one source and are
the first to give way to a learned entry.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator

from ...vnet_id import VnetId
from .bounds import BoundedTable, Entry
from .mirror import VARP, TableChange

INCOMPLETE = 1
REACHABLE = 2
FAILED = 3
STATE_NAMES = {INCOMPLETE: "incomplete", REACHABLE: "reachable", FAILED: "failed"}
LOOKUP = "lookup"           # the source of INCOMPLETE entries: a domain's lookups

Key = tuple[bytes, bytes]   # (16-byte vnet id, 6-byte MAC)


class VarpEntry(Entry):
    """One cache entry; mutable so a refresh is an attribute store."""

    __slots__ = ("addr", "state")

    def __init__(self, vnet: bytes, source: str | None, addr: str | None, state: int,
                 timestamp: float):
        super().__init__(vnet, source, timestamp)
        self.addr = addr
        self.state = state

    @property
    def timestamp(self) -> float:
        return self.stamp


class VarpCache:
    def __init__(self, ttl: float = 60.0) -> None:
        self.table = BoundedTable("varp", ttl)
        self.changes: list[TableChange] | None = None     # core/mirror.py

    def __len__(self) -> int:
        return len(self.table)

    def mirror(self, changes: list[TableChange]) -> None:
        """Report every reachable entry made, moved or gone to ``changes``."""
        self.changes = changes
        self.table.on_remove = self._removed

    def _removed(self, key: Hashable, entry: VarpEntry) -> None:
        if entry.state == REACHABLE:
            self.changes.append(TableChange(VARP, VnetId(key[0]), key[1], entry.addr, False))

    def _reached(self, vnet: bytes, mac: bytes, addr: str) -> None:
        if self.changes is not None:
            self.changes.append(TableChange(VARP, VnetId(vnet), mac, addr, True))

    def learn(self, vnet: bytes, mac: bytes, addr: str, now: float,
              source: str | None = None, counts: dict[str, int] | None = None) -> bool:
        """Set (vnet, mac) REACHABLE at ``addr``, taught by ``source`` (the
        outer or authenticated address); True when new or moved.  A refusal
        (the vnet or the source at its bound) is counted in ``counts``."""
        table = self.table
        key = (vnet, mac)
        entry = table.get(key)
        if entry is not None:
            if entry.stamp != now:      # one move per receive batch (its one ``now``)
                entry.stamp = now
                table.move_to_end(key)
            if entry.addr == addr and entry.state == REACHABLE:
                return False
            if entry.source == source:
                entry.addr = addr
                entry.state = REACHABLE
                self._reached(vnet, mac, addr)
                return True
            table.remove(key)           # taught by another source now
        if source != LOOKUP and table.full(vnet, source) is not None:
            oldest = table.oldest_of(vnet, LOOKUP)
            if oldest is not None:
                table.remove(oldest)    # a guess gives way to what a host said
        if not table.room(vnet, source, now, counts):
            return False
        table.insert(key, VarpEntry(vnet, source, addr, REACHABLE, now))
        self._reached(vnet, mac, addr)
        return True

    def resolve(self, vnet: bytes, mac: bytes, now: float,
                counts: dict[str, int] | None = None) -> str | None:
        """The address to tunnel a unicast frame to, None to flood it."""
        entry = self.table.get((vnet, mac))
        if entry is None:
            if self.table.room(vnet, LOOKUP, now, counts):
                self.table.insert((vnet, mac), VarpEntry(vnet, LOOKUP, None, INCOMPLETE, now))
            return None
        return entry.addr if entry.state == REACHABLE else None

    def get(self, vnet: bytes, mac: bytes) -> VarpEntry | None:
        return self.table.get((vnet, mac))

    def forget(self, vnet: bytes, mac: bytes) -> bool:
        return self.table.remove((vnet, mac)) is not None

    def sweep(self, now: float, ttl: float) -> int:
        """Remove entries older than ``ttl`` (strictly); the count removed."""
        return len(self.table.expire(now, ttl))

    def flush(self) -> None:
        """varp.flush: every entry goes (none is probing or permanent in era C)."""
        self.table.flush()

    def remove_vnet(self, vnet: bytes) -> None:
        self.table.remove_part(vnet)

    def entries(self) -> Iterator[tuple[bytes, bytes, VarpEntry]]:
        """(vnet, mac, entry) sorted by vnet then MAC, for listings."""
        for (vnet, mac), entry in self.table.items_sorted():
            yield vnet, mac, entry
