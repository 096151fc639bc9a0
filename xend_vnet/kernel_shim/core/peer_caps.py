"""Which care-of addresses run an engine of ours that takes id-5 segments
(docs/performance.md), and which decapsulate a vnet in their kernel path
(design.md 1.1).

The capability and the probe and answer limiters are bounded tables
(bounds.py, docs/security.md "Resource limits"), per vnet and per source:
forged announces fill the share of the vnet they name and of the address
they come from, refused and counted past it, with flat work per packet.
An address stays in a limiter for PROBE_INTERVAL; a limiter full of such
addresses sends nothing more (never cleared to start over: that would
make the engine a reflector).
"""

from __future__ import annotations

from collections.abc import Hashable

from ...vnet_id import VnetId
from .bounds import BoundedTable, Entry
from .mirror import KERNEL_PEER, TableChange

CAP_TTL = 180.0                  # a capability not heard of for this long is forgotten
CAP_REFRESH = 60.0               # hello again before it runs out
PROBE_INTERVAL = 5.0             # at most one probe (or answer) per address this often
ANY_VNET = b""                   # the vnet of callers that name none


def _once_per_interval(table: BoundedTable, addr: Hashable, now: float, part: Hashable,
                       source: str | None, counts: dict[str, int] | None) -> bool:
    """True, and remembered, unless ``addr`` had its turn within the table's
    TTL (its interval) or the table is full of addresses that had theirs (counted)."""
    entry = table.get(addr)
    if entry is not None:
        if now - entry.stamp < table.ttl:
            return False
        table.refresh(addr, entry, now)
        return True
    if not table.room(part, source, now, counts):
        return False
    table.insert(addr, Entry(part, source, now))
    return True


class PeerCapabilities:
    """Which care-of addresses run an engine that takes segments, learned from
    their announces and segments; probed with an announce, never assumed."""

    def __init__(self) -> None:
        self._heard = BoundedTable("caps", CAP_TTL)
        self._probed = BoundedTable("probes", PROBE_INTERVAL)
        self._answered = BoundedTable("answers", PROBE_INTERVAL)

    def __len__(self) -> int:
        return len(self._heard)

    def tables(self) -> tuple[BoundedTable, ...]:
        return self._heard, self._probed, self._answered

    def heard(self, addr: str, now: float, vnet: Hashable = ANY_VNET,
              source: str | None = None, counts: dict[str, int] | None = None) -> None:
        """``addr`` takes segments, as ``source`` said in ``vnet``."""
        table = self._heard
        entry = table.get(addr)
        if entry is not None:
            table.refresh(addr, entry, now)
        elif table.room(vnet, source, now, counts):
            table.insert(addr, Entry(vnet, source, now))

    def fast(self, addr: str, now: float) -> bool:
        e = self._heard.get(addr)
        return e is not None and now - e.stamp < CAP_TTL

    def probe_due(self, addr: str, now: float, vnet: Hashable = ANY_VNET,
                  counts: dict[str, int] | None = None) -> bool:
        """True (and remembered) when a hello should go to ``addr`` now."""
        e = self._heard.get(addr)
        if e is not None and now - e.stamp < CAP_REFRESH:
            return False
        return _once_per_interval(self._probed, addr, now, vnet, None, counts)

    def answer_due(self, addr: str, now: float, vnet: Hashable = ANY_VNET,
                   source: str | None = None, counts: dict[str, int] | None = None) -> bool:
        """True (and remembered) when a probe from ``source`` naming ``addr`` may
        be answered now: a flood of probes gets one answer per address and
        interval, and at most the table's bounds of addresses per interval."""
        return _once_per_interval(self._answered, addr, now, vnet, source, counts)

    def sweep(self, now: float) -> None:
        for table in self.tables():
            table.expire(now)

    def remove_vnet(self, vnet: Hashable) -> None:
        for table in self.tables():
            table.remove_part(vnet)

    def addresses(self, now: float) -> list[str]:
        return sorted(a for a, e in self._heard.items() if now - e.stamp < CAP_TTL)


class KernelPeers:
    """(vnet, care-of address) pairs whose engine decapsulates the vnet's known
    unicast in its kernel path (``CAP_KERNEL`` on its clear announces), for the
    kernel path's ``kernel_peer`` flag.  An announce without the bit takes the
    pair out again (its engine runs with the kernel path off now).  Refreshed
    by announces only, so a pair seen in use is probed again before it runs
    out, at most once per CAP_REFRESH (a legacy host never answers)."""

    def __init__(self) -> None:
        self._heard = BoundedTable("kernel_peers", CAP_TTL)
        self._probed = BoundedTable("probes", CAP_REFRESH)
        self.changes: list[TableChange] | None = None     # core/mirror.py

    def __len__(self) -> int:
        return len(self._heard)

    def tables(self) -> tuple[BoundedTable, ...]:
        return self._heard, self._probed

    def mirror(self, changes: list[TableChange]) -> None:
        """Report every pair made or gone to ``changes``."""
        self.changes = changes
        self._heard.on_remove = self._removed

    def _removed(self, key: Hashable, _entry: Entry) -> None:
        self.changes.append(TableChange(KERNEL_PEER, VnetId(key[0]), b"", key[1], False))

    def heard(self, vnet: bytes, addr: str, kernel: bool, now: float, source: str,
              counts: dict[str, int] | None = None) -> None:
        """An announce of ``vnet`` at ``addr``, from ``source``, with (``kernel``)
        or without the bit."""
        table = self._heard
        key = (vnet, addr)
        entry = table.get(key)
        if not kernel:
            if entry is not None:
                table.remove(key)
            return
        if entry is not None:
            table.refresh(key, entry, now)
        elif table.room(vnet, source, now, counts):
            table.insert(key, Entry(vnet, source, now))
            if self.changes is not None:
                self.changes.append(TableChange(KERNEL_PEER, VnetId(vnet), b"", addr, True))

    def known(self, vnet: bytes, addr: str, now: float) -> bool:
        e = self._heard.get((vnet, addr))
        return e is not None and now - e.stamp < CAP_TTL

    def probe_due(self, vnet: bytes, addr: str, now: float,
                  counts: dict[str, int] | None = None) -> bool:
        """True (and remembered) when ``addr`` should be asked again now."""
        e = self._heard.get((vnet, addr))
        if e is not None and now - e.stamp < CAP_REFRESH:
            return False
        return _once_per_interval(self._probed, (vnet, addr), now, vnet, None, counts)

    def addresses(self, vnet: bytes) -> list[str]:
        return sorted(addr for _, addr in self._heard.keys_of(vnet))

    def sweep(self, now: float) -> None:
        for table in self.tables():
            table.expire(now)

    def remove_vnet(self, vnet: bytes) -> None:
        for table in self.tables():
            table.remove_part(vnet)
