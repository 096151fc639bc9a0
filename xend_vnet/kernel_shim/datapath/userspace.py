"""The user-space data path: TAPs, the engine's UDP socket and its raw
sockets, with every frame through the engine core (protocol.md 4, 9.1).

Readers hand what the kernel gives to the core (``receive_*(..., now)``) and
perform the actions it returns: datagrams to send, frames to write to a TAP,
packets for the raw socket.  With TAP offloads, frames that one batch of
datagrams delivers are coalesced first (coalesce.py).  What cannot be sent
or written counts in ``EngineCounters.io_dropped`` by reason; an exception in
the core counts as ``engine_error`` and never stops the engine.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Sequence

from ...vnet_id import VnetId
from ..core.counters import count
from ..core.engine import (
    DeliverFrame,
    DeliverOffload,
    EngineCore,
    SendFast,
    SendRaw,
    SendTrain,
    SendUdp,
)
from ..wire.codec import ETH_HEADER_LEN
from ..wire.offload import MAX_PACKET, VNET_HDR_LEN, ZERO_VNET_HDR
from .coalesce import coalesce
from .interface import DataPathError, PathStatus, TableChange
from .loop import EventLoop
from .raw import EtheripSocket, RawSender
from .tap import TapDevice, TapError
from .taps import VnetTaps
from .trains import DEFAULT_UNDERLAY_MTU, TrainSender, io_error_reason
from .udp import EngineSocket

log = logging.getLogger("vnetd")

ERROR_LOG_INTERVAL = 1.0    # core failures are logged at most this often


class UserSpacePath:
    """The data path of ``(data-path vnetd)`` vnets (a DataPath)."""

    name = "vnetd"

    def __init__(self, core: EngineCore, loop: EventLoop, *, port: int, mcast_ttl: int,
                 mtu: int, tap_offload: bool):
        self.core = core
        self.loop = loop
        self.port = port
        self.mcast_ttl = mcast_ttl
        self.tap_offload = tap_offload
        self.dropped = core.counters.io_dropped
        self.taps = VnetTaps(loop, mtu, tap_offload, self.dropped, self._on_tap)
        self.max_frame = mtu + ETH_HEADER_LEN + 4   # room for one 802.1Q tag
        self.underlay_mtu = DEFAULT_UNDERLAY_MTU
        self.udp: EngineSocket | None = None
        self.trains: TrainSender | None = None
        self.raw: RawSender | None = None
        self.etherip: EtheripSocket | None = None
        self.coalesced = 0          # frames that reached a TAP inside a merged one
        self._next_error_log = 0.0

    # -- sockets -----------------------------------------------------------------

    def open_udp(self, ifindex: int) -> None:
        """The engine's socket on its port, group not joined yet; OSError when not."""
        self.udp = EngineSocket(self.port, self.core.mcaddr, self.mcast_ttl, ifindex,
                                gro=self.tap_offload)
        self.trains = TrainSender(self.udp, self.dropped, self.underlay_mtu)
        self.loop.register(self.udp.sock, self._on_udp)

    def open_raw(self, ifindex: int) -> None:
        """Re-multicast of VFWD and proto-97 receive (protocol.md 4.3, 7); without
        CAP_NET_RAW the engine runs on and the status says so."""
        try:
            self.raw = RawSender(ifindex)
        except OSError as e:
            log.warning("no raw socket for re-multicasting peer traffic (%s): hosts on "
                        "this link learn forwarded senders only through this engine",
                        e.strerror)
        try:
            self.etherip = EtheripSocket()
        except OSError as e:
            log.warning("no raw socket for etherip (IP protocol 97) receive: %s", e.strerror)
            return
        self.loop.register(self.etherip.sock, self._on_etherip)

    def join_group(self) -> None:
        udp = self.udp
        if udp.try_join():
            log.info("joined VARP group %s", udp.mcaddr)
        else:
            log.warning("cannot join VARP group %s yet (%s); retrying", udp.mcaddr,
                        udp.join_error)

    def set_group(self, addr: str, ttl: int | None) -> None:
        """Leave the group for ``addr`` (varp.mcaddr, protocol.md 3.1); DataPathError
        for a group the socket refuses.  Not joined yet is retried at the refresh."""
        try:
            joined = self.udp.set_group(addr, ttl)
        except OSError as e:
            raise DataPathError(errno.EINVAL, f"invalid multicast group {addr!r}: {e}") \
                from None
        if joined:
            log.info("joined VARP group %s", addr)
        else:
            log.warning("cannot join VARP group %s yet (%s); retrying", addr, self.udp.join_error)

    def check_group(self) -> None:
        """Forget the group when the host no longer holds it (its device went away)."""
        udp = self.udp
        if udp.joined and not udp.check_membership():
            log.warning("lost VARP group %s (its device went away); rejoining", udp.mcaddr)

    def rejoin(self, ifindex: int) -> bool:
        """Join the group on ``ifindex`` if not joined; whether it is joined."""
        udp = self.udp
        if not udp.joined:
            udp.ifindex = ifindex
            if udp.try_join():
                log.info("joined VARP group %s", udp.mcaddr)
        return udp.joined

    def pin_source(self, address: str | None) -> None:
        """Send from ``address`` (None: the address the routing table picks)."""
        if self.udp is not None and address != self.udp.source:
            self.udp.pin_source(address)
            log.info("sending from %s", address or "the address the routing table picks")

    def set_underlay_mtu(self, mtu: int) -> None:
        self.underlay_mtu = mtu
        if self.trains is not None:
            self.trains.set_underlay_mtu(mtu)

    # -- DataPath ----------------------------------------------------------------

    def attach(self, vid: VnetId, ifname: str) -> None:
        self.taps.open(vid, ifname)

    def undo_attach(self, vid: VnetId) -> None:
        """The vnet could not be added after all: its TAP goes if ``attach`` made it."""
        self.taps.undo_open(vid)

    def detach(self, vid: VnetId) -> None:
        tap = self.taps.delete(vid)
        if tap is not None:
            log.info("vnet %s deleted with %s", vid.canonical, tap.ifname)

    def table_changed(self, changes: Sequence[TableChange]) -> None:
        """Nothing to mirror: the core's tables are this path's."""

    def counters(self) -> dict[str, int]:
        return {"coalesced": self.coalesced}

    def status(self, vid: VnetId) -> PathStatus | None:
        tap = self.taps.by_vid.get(vid)
        if tap is not None:
            return PathStatus(self.name, f"TAP {tap.ifname}: its frames pass through "
                              "the engine")
        ifname = self.taps.lost.get(vid)
        if ifname is not None:
            return PathStatus(self.name, f"TAP {ifname} was deleted from outside: made "
                              "again at the next refresh")
        return None

    def close(self) -> None:
        """Close the sockets and detach the TAPs; the devices stay (design.md 5)."""
        for sock in (self.udp, self.raw, self.etherip):
            if sock is not None:
                sock.close()
        self.taps.close()

    # -- receiving -------------------------------------------------------------------

    def _on_udp(self, _mask: int, now: float) -> None:
        """A batch of receives.  With TAP offloads, the frames of a UDP_GRO train,
        or of single datagrams read in a row, are coalesced like GRO would
        (coalesce.py) before they are written; a train is written before the
        next receive is looked at, so nothing waits for the whole batch."""
        receive = self.core.receive_udp
        receive_train = self.core.receive_train
        pending: list = []       # actions of single datagrams, not yet performed
        for payload, src, dst, gso in self.udp.recv_batch(self.loop.batch):
            try:
                if gso:
                    self.perform_coalesced(pending)
                    pending = []
                    self.perform_coalesced(receive_train(payload, gso, src, dst, now))
                else:
                    pending += receive(payload, src, dst, now)
            except Exception:  # noqa: BLE001 -- one bad datagram must not stop the engine
                self.engine_error("datagram from " + src)
        self.perform_coalesced(pending)

    def perform_coalesced(self, actions: list) -> None:
        """``perform`` after merging what coalesce.py can merge."""
        if len(actions) > 1 and self.tap_offload:
            try:
                actions, merged = coalesce(actions, self.max_frame)
            except Exception:  # noqa: BLE001 -- then the frames go unmerged
                self.engine_error("batch to coalesce", "written unmerged")
            else:
                self.coalesced += merged
        if actions:
            self.perform(actions)

    def _on_etherip(self, _mask: int, now: float) -> None:
        receive = self.core.receive_etherip
        for packet, src, dst in self.etherip.recv_batch(self.loop.batch):
            try:
                actions = receive(packet, src, dst, now)
            except Exception:  # noqa: BLE001 -- one bad packet must not stop the engine
                self.engine_error("proto-97 packet from " + src)
                continue
            if actions:
                self.perform(actions)

    def _on_tap(self, vid: VnetId, tap: TapDevice, now: float) -> None:
        try:
            frames = tap.read_batch(self.loop.batch)
        except TapError as e:
            self.taps.lose(vid, tap, e)
            return
        receive = self.core.receive_tap
        perform = self.perform
        offload = tap.vnet_hdr
        for frame in frames:
            try:
                if not offload:
                    actions = receive(vid, frame, now)
                elif frame.startswith(ZERO_VNET_HDR):
                    # An all-zero virtio_net_hdr is a plain frame (wire/offload.py).
                    actions = receive(vid, frame[VNET_HDR_LEN:], now)
                else:
                    actions = receive(vid, frame[VNET_HDR_LEN:], now, frame)
            except Exception:  # noqa: BLE001 -- one bad frame must not stop the engine
                self.engine_error("frame from " + tap.ifname)
                continue
            if actions:
                perform(actions)

    def engine_error(self, what: str, outcome: str = "dropped") -> None:
        """Count a core failure; log the first of each second with its traceback."""
        count(self.dropped, "engine_error")
        now = time.monotonic()
        if now >= self._next_error_log:
            self._next_error_log = now + ERROR_LOG_INTERVAL
            log.exception("engine error on a %s (%s)", what, outcome)

    # -- performing the core's actions -----------------------------------------------

    def perform(self, actions: list) -> None:
        sendto = self.udp.send_to
        port = self.port
        max_frame = self.max_frame
        taps = self.taps.by_vid
        dropped = self.dropped
        for action in actions:
            kind = action.__class__
            if kind is SendUdp:
                try:
                    sendto(action.payload, (action.dst_ip, port))
                except OSError as e:
                    count(dropped, io_error_reason("udp_send_", e))
            elif kind is DeliverFrame:
                if len(action.frame) > max_frame:
                    count(dropped, "frame_too_big")   # larger than the vnet's MTU allows
                    continue
                tap = taps.get(action.vid)
                if tap is None:
                    count(dropped, "tap_missing")
                    continue
                try:
                    if tap.vnet_hdr:
                        os.writev(tap.fd, (ZERO_VNET_HDR, action.frame))
                    else:
                        os.write(tap.fd, action.frame)
                except OSError as e:
                    count(dropped, io_error_reason("tap_write_", e))
            elif kind is SendTrain:
                self.trains.send_train(action.dst_ip, action.payloads)
            elif kind is SendFast:
                self.trains.send_fast(action)
            elif kind is DeliverOffload:
                self._deliver_offload(action)
            elif kind is SendRaw:
                self._send_raw(action)
            else:
                log.error("unknown engine action %r", action)

    def _deliver_offload(self, action: DeliverOffload) -> None:
        tap = self.taps.by_vid.get(action.vid)
        if tap is None or not tap.vnet_hdr:
            count(self.dropped, "tap_missing" if tap is None else "offload_on_plain_tap")
            return
        if len(action.packet) > MAX_PACKET:
            count(self.dropped, "frame_too_big")
            return
        try:
            os.write(tap.fd, action.packet)
        except OSError as e:
            count(self.dropped, io_error_reason("tap_write_", e))

    def _send_raw(self, action: SendRaw) -> None:
        if self.raw is None:
            count(self.dropped, "raw_unavailable")
            return
        try:
            self.raw.send(action.packet, action.dst_ip)
        except OSError as e:
            count(self.dropped, io_error_reason("raw_send_", e))
