"""Bounded tables for the state packets and domains create (docs/security.md,
"Resource limits").

Every table the network or a domain fills is a ``BoundedTable``: an ordered
dict whose entries are kept in the order of their last refresh (a refresh
moves the entry to the end), so ageing pops from the front and costs only
the entries it removes.  Room is given per vnet (a default bound, which the
engine may override per vnet) under a global cap that reserves
``reserve`` entries for every vnet, and per source (the outer address)
within a vnet.  A full table keeps what it holds and refuses the newcomer;
the caller counts the refusal under the reason ``room`` returns.

``LIMITS`` is the one place the bounds are written; docs/security.md shows
the same numbers (a unit test compares them).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import NamedTuple

from .counters import count


class Limits(NamedTuple):
    per_vnet: int           # entries of one vnet
    reserve: int            # entries every vnet may have, whatever the others hold
    total: int              # entries of all vnets together
    per_source: int = 0     # entries of one source in one vnet; 0: no such bound


LIMITS: dict[str, Limits] = {
    "varp": Limits(per_vnet=4096, reserve=64, total=131072, per_source=1024),
    "vif": Limits(per_vnet=1024, reserve=16, total=65536),
    "caps": Limits(per_vnet=256, reserve=4, total=8192, per_source=4),
    "kernel_peers": Limits(per_vnet=256, reserve=4, total=8192, per_source=4),
    "probes": Limits(per_vnet=256, reserve=4, total=8192),
    "answers": Limits(per_vnet=256, reserve=4, total=8192, per_source=4),
    "reassembly": Limits(per_vnet=64, reserve=1, total=1024, per_source=16),
    "duplicates": Limits(per_vnet=65536, reserve=0, total=65536, per_source=8192),
}


class Entry:
    """What a bounded table holds: its vnet (``part``), the source that made
    it (None: a domain or the operator) and when it was last refreshed."""

    __slots__ = ("part", "source", "stamp")

    def __init__(self, part: Hashable, source: Hashable | None, stamp: float):
        self.part = part
        self.source = source
        self.stamp = stamp


class BoundedTable(OrderedDict):
    """key -> Entry, oldest refresh first.  Read it like a dict; change it
    only through ``insert``, ``refresh``, ``remove``, ``expire`` and ``flush``."""

    def __init__(self, kind: str, ttl: float, limits: Limits | None = None,
                 inclusive: bool = False):
        super().__init__()
        self.kind = kind
        self.ttl = ttl
        self.inclusive = inclusive  # an entry exactly ``ttl`` old has expired too
        self.limits = limits or LIMITS[kind]
        self.vnets = 1              # vnets holding a reserve (set by the engine)
        self.touched = 0            # entries looked at while ageing: flat per packet
        self.refused: dict[str, int] = {}   # refusals without a caller's table
        self._parts: dict[Hashable, dict] = {}      # vnet -> its keys
        self._sources: dict[tuple, dict] = {}       # (vnet, source) -> its keys, oldest first
        self._overrides: dict[Hashable, int] = {}
        self._shared = 0            # entries above their vnet's reserve
        # Told of every entry that goes, however it goes (a table that a
        # data path mirrors, core/mirror.py); None: nobody asks.
        self.on_remove: Callable[[Hashable, Entry], None] | None = None
        self._why = {r: f"{kind}_{r}" for r in ("vnet_full", "source_full", "table_full")}

    # -- bounds ----------------------------------------------------------------

    def set_limit(self, part: Hashable, per_vnet: int | None) -> None:
        """Override the per-vnet bound of ``part`` (None: back to the default)."""
        if per_vnet is None:
            self._overrides.pop(part, None)
        else:
            self._overrides[part] = per_vnet

    def limit(self, part: Hashable) -> int:
        return self._overrides.get(part, self.limits.per_vnet)

    def count_of(self, part: Hashable, source: Hashable | None = None) -> int:
        keys = self._parts.get(part) if source is None else self._sources.get((part, source))
        return len(keys) if keys else 0

    def full(self, part: Hashable, source: Hashable | None) -> str | None:
        """Why one more entry of ``part`` from ``source`` does not fit, or None."""
        lim = self.limits
        keys = self._parts.get(part)
        n = len(keys) if keys else 0
        if n >= self._overrides.get(part, lim.per_vnet):
            return self._why["vnet_full"]
        if (lim.per_source and source is not None
                and self.count_of(part, source) >= lim.per_source):
            return self._why["source_full"]
        if len(self) >= lim.total or (
                n >= lim.reserve and self._shared >= lim.total - lim.reserve * self.vnets):
            return self._why["table_full"]
        return None

    def room(self, part: Hashable, source: Hashable | None, now: float,
             counts: dict[str, int] | None = None) -> bool:
        """Whether an entry fits, aged entries removed first if it would not;
        a refusal is counted in ``counts`` (or ``refused``)."""
        why = self.full(part, source)
        if why is not None and self.expire(now):
            why = self.full(part, source)
        if why is None:
            return True
        count(self.refused if counts is None else counts, why)
        return False

    # -- changes ---------------------------------------------------------------

    def insert(self, key: Hashable, entry: Entry) -> None:
        """Add ``entry`` (``room`` said it fits) as the newest."""
        self[key] = entry
        keys = self._parts.get(entry.part)
        if keys is None:
            keys = self._parts[entry.part] = {}
        if len(keys) >= self.limits.reserve:
            self._shared += 1
        keys[key] = None
        if entry.source is not None:
            self._sources.setdefault((entry.part, entry.source), {})[key] = None

    def refresh(self, key: Hashable, entry: Entry, now: float) -> None:
        if entry.stamp != now:
            entry.stamp = now
            self.move_to_end(key)

    def remove(self, key: Hashable) -> Entry | None:
        entry = self.pop(key, None)
        if entry is None:
            return None
        part = entry.part
        keys = self._parts[part]
        del keys[key]
        if len(keys) >= self.limits.reserve:
            self._shared -= 1
        if not keys:
            del self._parts[part]
        if entry.source is not None:
            skeys = self._sources[(part, entry.source)]
            del skeys[key]
            if not skeys:
                del self._sources[(part, entry.source)]
        if self.on_remove is not None:
            self.on_remove(key, entry)
        return entry

    def oldest_of(self, part: Hashable, source: Hashable) -> Hashable | None:
        """The key ``source`` made first in ``part`` (to evict its own, not others')."""
        return next(iter(self._sources.get((part, source), ())), None)

    def any_key(self, part: Hashable) -> Hashable | None:
        return next(iter(self._parts.get(part, ())), None)

    def keys_of(self, part: Hashable) -> list:
        return list(self._parts.get(part, ()))

    def expire(self, now: float, ttl: float | None = None) -> list[tuple[Hashable, Entry]]:
        """Remove the entries not refreshed for more than ``ttl`` (default the
        table's): from the front, so the work is what is removed, plus one."""
        ttl = self.ttl if ttl is None else ttl
        horizon = now - ttl
        gone = []
        for key in self:
            self.touched += 1
            entry = self[key]
            if (entry.stamp > horizon) if self.inclusive else (now - entry.stamp <= ttl):
                break
            gone.append((key, entry))
        for key, _ in gone:
            self.remove(key)
        return gone

    def remove_part(self, part: Hashable) -> None:
        for key in self.keys_of(part):
            self.remove(key)
        self._overrides.pop(part, None)

    def flush(self) -> None:
        if self.on_remove is not None:
            for key, entry in self.items():
                self.on_remove(key, entry)
        self.clear()
        self._parts.clear()
        self._sources.clear()
        self._shared = 0

    def items_sorted(self) -> Iterator[tuple[Hashable, Entry]]:
        return iter(sorted(self.items(), key=lambda kv: kv[0]))
