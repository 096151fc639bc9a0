"""Which care-of addresses run an engine of ours that takes id-5 segments (docs/performance.md)."""

from __future__ import annotations

CAP_TTL = 180.0                  # a capability not heard of for this long is forgotten
CAP_REFRESH = 60.0               # hello again before it runs out
PROBE_INTERVAL = 5.0             # at most one probe (or answer) per address this often
CAP_LIMIT = 4096


def _once_per_interval(last_times: dict[str, float], addr: str, now: float) -> bool:
    """True, and remembered, unless ``addr`` had its turn within PROBE_INTERVAL;
    the table is bounded (cleared when full)."""
    last = last_times.get(addr)
    if last is not None and now - last < PROBE_INTERVAL:
        return False
    if last is None and len(last_times) >= CAP_LIMIT:
        last_times.clear()
    last_times[addr] = now
    return True


class PeerCapabilities:
    """Which care-of addresses run an engine that takes segments, learned from
    their announces and segments; probed with an announce, never assumed."""

    def __init__(self) -> None:
        self._heard: dict[str, float] = {}
        self._probed: dict[str, float] = {}
        self._answered: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._heard)

    def heard(self, addr: str, now: float) -> None:
        if addr not in self._heard and len(self._heard) >= CAP_LIMIT:
            self.sweep(now)
        self._heard[addr] = now

    def fast(self, addr: str, now: float) -> bool:
        t = self._heard.get(addr)
        return t is not None and now - t < CAP_TTL

    def probe_due(self, addr: str, now: float) -> bool:
        """True (and remembered) when a hello should go to ``addr`` now."""
        t = self._heard.get(addr)
        if t is not None and now - t < CAP_REFRESH:
            return False
        return _once_per_interval(self._probed, addr, now)

    def answer_due(self, addr: str, now: float) -> bool:
        """True (and remembered) when a probe from ``addr`` may be answered now:
        a flood of probes gets one answer per address and interval."""
        return _once_per_interval(self._answered, addr, now)

    def sweep(self, now: float) -> None:
        self._heard = {a: t for a, t in self._heard.items() if now - t < CAP_TTL}
        self._probed = {a: t for a, t in self._probed.items() if now - t < CAP_TTL}
        self._answered = {a: t for a, t in self._answered.items() if now - t < CAP_TTL}

    def addresses(self, now: float) -> list[str]:
        return sorted(a for a, t in self._heard.items() if now - t < CAP_TTL)
