"""The TAPs of the user-space path's vnets (design.md 4-5): opened or
reattached, read by the event loop, made again when deleted from outside,
deleted with their vnet, left on their bridges when the engine stops.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ...vnet_id import VnetId
from ..core.counters import count
from .interface import DataPathError
from .loop import EventLoop
from .tap import TapDevice, TapError, delete_tap, open_tap

log = logging.getLogger("vnetd")

FrameReader = Callable[[VnetId, TapDevice, float], None]


class VnetTaps:
    """One persistent TAP per vnet; ``read(vid, tap, now)`` when it has frames."""

    def __init__(self, loop: EventLoop, mtu: int, offload: bool, dropped: dict[str, int],
                 read: FrameReader):
        self.loop = loop
        self.mtu = mtu
        self.offload = offload     # offloads unless --no-tap-offload (wire/offload.py)
        self.dropped = dropped
        self.read = read
        self.by_vid: dict[VnetId, TapDevice] = {}
        self.lost: dict[VnetId, str] = {}     # deleted from outside, to make again

    def open(self, vid: VnetId, ifname: str) -> None:
        """Create or reattach the vnet's TAP and read it; DataPathError when not."""
        try:
            tap = open_tap(ifname, self.mtu, self.offload)
        except TapError as e:
            raise DataPathError(e.errno, e.message) from None
        self._watch(vid, tap)

    def undo_open(self, vid: VnetId) -> None:
        """A failed vnet.add leaves nothing behind (design.md 4): a TAP ``open``
        created goes, one it reattached stays for its owner."""
        tap = self.by_vid.pop(vid)
        self.loop.unregister(tap.fd)
        if tap.created:
            try:
                delete_tap(tap)
            except TapError as e:
                log.warning("%s", e.message)
        else:
            tap.close()

    def delete(self, vid: VnetId) -> TapDevice | None:
        """Stop reading the vnet's TAP and delete the device (vnet.del); the
        TAP, or None when there was none (it is lost: not made again)."""
        self.lost.pop(vid, None)
        tap = self.by_vid.pop(vid, None)
        if tap is None:
            return None
        self.loop.unregister(tap.fd)
        try:
            delete_tap(tap)
        except TapError as e:
            raise DataPathError(e.errno, e.message) from None
        return tap

    def _watch(self, vid: VnetId, tap: TapDevice) -> None:
        self.by_vid[vid] = tap
        read = self.read
        self.loop.register(tap.fd, lambda _mask, now: read(vid, tap, now))

    def lose(self, vid: VnetId, tap: TapDevice, error: TapError) -> None:
        """The device was deleted from outside: stop reading it, keep the vnet,
        and make the TAP again at the next refresh (xend-vnet re-enslaves it)."""
        self.loop.unregister(tap.fd)
        tap.close()
        self.by_vid.pop(vid, None)
        self.lost[vid] = tap.ifname
        count(self.dropped, "tap_lost")
        log.warning("vnet %s: %s; recreating it", vid.canonical, error.message)

    def recreate_lost(self, wanted: Callable[[VnetId], bool]) -> None:
        """Make the lost TAPs of the vnets still ``wanted`` again."""
        for vid, ifname in list(self.lost.items()):
            if not wanted(vid):
                del self.lost[vid]
                continue
            try:
                tap = open_tap(ifname, self.mtu, self.offload)
            except TapError as e:
                log.warning("vnet %s: cannot recreate %s yet: %s", vid.canonical, ifname,
                            e.message)
                continue
            del self.lost[vid]
            self._watch(vid, tap)
            log.info("vnet %s: %s recreated", vid.canonical, ifname)

    def close(self) -> None:
        """Detach every TAP; the devices stay on their bridges (design.md 5)."""
        for tap in self.by_vid.values():
            tap.close()
        self.by_vid.clear()
