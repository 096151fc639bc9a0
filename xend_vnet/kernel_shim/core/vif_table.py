"""The vif table: MACs of local domains per vnet (protocol.md 3.6, design.md 8).

Filled from frames read off a vnet's TAP and by ``vif.add``.  Its protocol
role is answering VARP requests, and in this engine also spotting a MAC
that appears for the first time (a domain arrived: one gratuitous announce).
Entries expire when older than the TTL at a sweep.  Bounded per vnet
(bounds.py, docs/security.md "Resource limits"): a domain sending from
random MACs fills its own vnet's share only, and past it records (and
announces) nothing new.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator

from ...vnet_id import VnetId
from .bounds import BoundedTable, Entry
from .mirror import VIF, TableChange

Key = tuple[bytes, bytes]   # (16-byte vnet id, 6-byte MAC)


class VifTable:
    def __init__(self, ttl: float = 60.0) -> None:
        self.table = BoundedTable("vif", ttl)
        self.sweeps = 0
        self.changes: list[TableChange] | None = None     # core/mirror.py

    def mirror(self, changes: list[TableChange]) -> None:
        """Report every entry made or gone to ``changes``."""
        self.changes = changes
        self.table.on_remove = self._removed

    def _removed(self, key: Hashable, _entry: Entry) -> None:
        self.changes.append(TableChange(VIF, VnetId(key[0]), key[1], None, False))

    def __len__(self) -> int:
        return len(self.table)

    def __contains__(self, key: Key) -> bool:
        return key in self.table

    def update(self, vnet: bytes, mac: bytes, now: float,
               counts: dict[str, int] | None = None) -> bool:
        """Record a frame from (vnet, mac); True when the MAC is new (and
        recorded: a vnet at its bound records nothing new, counted in ``counts``)."""
        key = (vnet, mac)
        table = self.table
        entry = table.get(key)
        if entry is not None:
            if entry.stamp != now:      # one move per read batch (its one ``now``)
                entry.stamp = now
                table.move_to_end(key)
            return False
        if not table.room(vnet, None, now, counts):
            return False
        table.insert(key, Entry(vnet, None, now))
        if self.changes is not None:
            self.changes.append(TableChange(VIF, VnetId(vnet), mac, None, True))
        return True

    def remove(self, vnet: bytes, mac: bytes) -> bool:
        return self.table.remove((vnet, mac)) is not None

    def sweep(self, now: float, ttl: float) -> list[Key]:
        """Remove entries older than ``ttl`` (strictly); the keys removed."""
        self.sweeps += 1
        return [k for k, _ in self.table.expire(now, ttl)]

    def any_mac(self, vnet: bytes) -> bytes | None:
        """One local MAC of ``vnet`` (to announce as a capability answer), or None."""
        key = self.table.any_key(vnet)
        return None if key is None else key[1]

    def remove_vnet(self, vnet: bytes) -> None:
        self.table.remove_part(vnet)

    def entries(self) -> Iterator[tuple[bytes, bytes, float]]:
        """(vnet, mac, last seen) sorted by vnet then MAC, for listings."""
        for (vnet, mac), entry in self.table.items_sorted():
            yield vnet, mac, entry.stamp
