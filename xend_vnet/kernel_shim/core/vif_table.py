"""The vif table: MACs of local domains per vnet (protocol.md 3.6, design.md 8).

Filled from frames read off a vnet's TAP and by ``vif.add``.  Its protocol
role is answering VARP requests, and in this engine also spotting a MAC
that appears for the first time (a domain arrived: one gratuitous announce).
Entries expire when older than the TTL at a sweep.
"""

from __future__ import annotations

from collections.abc import Iterator

Key = tuple[bytes, bytes]   # (16-byte vnet id, 6-byte MAC)


class VifTable:
    # A domain sending from random source MACs must not grow the table (nor
    # trigger an announce per MAC) without limit between sweeps.
    MAX_ENTRIES = 65536

    def __init__(self) -> None:
        self._seen: dict[Key, float] = {}
        self.sweeps = 0

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, key: Key) -> bool:
        return key in self._seen

    def update(self, vnet: bytes, mac: bytes, now: float) -> bool:
        """Record a frame from (vnet, mac); True when the MAC is new (and
        recorded: a full table records nothing new)."""
        key = (vnet, mac)
        if key in self._seen:
            self._seen[key] = now
            return False
        if len(self._seen) >= self.MAX_ENTRIES:
            return False
        self._seen[key] = now
        return True

    def remove(self, vnet: bytes, mac: bytes) -> bool:
        return self._seen.pop((vnet, mac), None) is not None

    def sweep(self, now: float, ttl: float) -> list[Key]:
        """Remove entries older than ``ttl`` (strictly); the keys removed."""
        self.sweeps += 1
        old = [k for k, seen in self._seen.items() if now - seen > ttl]
        for k in old:
            del self._seen[k]
        return old

    def any_mac(self, vnet: bytes) -> bytes | None:
        """One local MAC of ``vnet`` (to announce as a capability answer), or None."""
        for v, mac in self._seen:
            if v == vnet:
                return mac
        return None

    def remove_vnet(self, vnet: bytes) -> None:
        for k in [k for k in self._seen if k[0] == vnet]:
            del self._seen[k]

    def entries(self) -> Iterator[tuple[bytes, bytes, float]]:
        """(vnet, mac, last seen) sorted by vnet then MAC, for listings."""
        for (vnet, mac), seen in sorted(self._seen.items()):
            yield vnet, mac, seen
