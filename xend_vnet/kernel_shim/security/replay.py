"""Anti-replay sliding window (RFC 4303 3.4.3, design.md 7).

``check`` says whether a sequence number may be new; ``update`` records it
and must only be called after the packet's ICV verified, so forged packets
never move the window.  Sequence numbers start at 1.
"""

from __future__ import annotations

WINDOW = 1024


class ReplayWindow:
    __slots__ = ("bits", "mask", "size", "top")

    def __init__(self, size: int = WINDOW):
        if size < 1:
            raise ValueError(f"invalid replay window {size}")
        self.size = size
        self.mask = (1 << size) - 1
        self.top = 0        # highest sequence number seen
        self.bits = 0       # bit i: top - i seen

    def check(self, seq: int) -> str | None:
        """None when ``seq`` may be accepted, else the drop reason."""
        if seq > self.top:
            return None
        if seq == 0:
            return "replay_zero_seq"
        offset = self.top - seq
        if offset >= self.size:
            return "replay_too_old"
        if self.bits >> offset & 1:
            return "replay"
        return None

    def update(self, seq: int) -> None:
        """Record ``seq`` (already checked and verified)."""
        if seq > self.top:
            shift = seq - self.top
            self.bits = ((self.bits << shift) | 1) & self.mask if shift < self.size else 1
            self.top = seq
        else:
            self.bits |= 1 << (self.top - seq)
