"""Which care-of addresses run an engine of ours that takes id-5 segments (docs/performance.md).

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

from .bounds import BoundedTable, Entry

CAP_TTL = 180.0                  # a capability not heard of for this long is forgotten
CAP_REFRESH = 60.0               # hello again before it runs out
PROBE_INTERVAL = 5.0             # at most one probe (or answer) per address this often
ANY_VNET = b""                   # the vnet of callers that name none


def _once_per_interval(table: BoundedTable, addr: str, now: float, part: Hashable,
                       source: str | None, counts: dict[str, int] | None) -> bool:
    """True, and remembered, unless ``addr`` had its turn within PROBE_INTERVAL
    or the table is full of addresses that had theirs (counted)."""
    entry = table.get(addr)
    if entry is not None:
        if now - entry.stamp < PROBE_INTERVAL:
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
