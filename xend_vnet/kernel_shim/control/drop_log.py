"""Drop reasons in the debug log (vnetd -V): one line per reason that grew
since the last look, with where it was counted and by how much."""

from __future__ import annotations

import logging

from ..core.engine import EngineCore

log = logging.getLogger("vnetd")


def drop_counts(core: EngineCore) -> dict[str, int]:
    """Every drop counter of the engine by "where reason"."""
    counters = core.counters
    current: dict[str, int] = {}
    for reason, n in counters.rx_dropped.items():
        current["rx " + reason] = n
    for reason, n in counters.tap_dropped.items():
        current["tap " + reason] = n
    for reason, n in core.refused().items():
        current["refused " + reason] = n
    for v in core.vnets():
        for reason, n in v.counters.dropped.items():
            current[f"vnet {v.vid.canonical} {reason}"] = n
        for reason, n in v.counters.refused.items():
            current[f"vnet {v.vid.canonical} {reason}"] = n
    for reason, n in counters.io_dropped.items():
        current["io " + reason] = n
    return current


class DropLog:
    """Logs the growth of the drop counters between two looks."""

    def __init__(self) -> None:
        self._snapshot: dict[str, int] = {}

    def log_growth(self, core: EngineCore) -> None:
        current = drop_counts(core)
        for key, n in current.items():
            delta = n - self._snapshot.get(key, 0)
            if delta:
                where, _, reason = key.rpartition(" ")
                log.debug("dropped where=%s reason=%s count=%d", where, reason, delta)
        self._snapshot = current
