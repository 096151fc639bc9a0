"""Sending many datagrams to one address: the plain frames of a super-frame
(``SendTrain``) and the segments of one (``SendFast``), with one ``sendmsg``
and ``UDP_SEGMENT`` per train where the underlay allows it (docs/performance.md).

A failed send counts under its reason in the engine's I/O drop counters
(``EngineCounters.io_dropped``): ``udp_send_`` and the errno name.
"""

from __future__ import annotations

import errno
import logging
from typing import Any, Protocol

from ..core.counters import count
from ..core.engine import SendFast
from ..wire.segments import (
    BYTES_PER_SEND,
    SEGMENT_HEADER_LEN,
    SEGMENTS_PER_SEND,
    UDP_IP_OVERHEAD,
    chunk_size,
    segment_sends,
)

log = logging.getLogger("vnetd")

DEFAULT_UNDERLAY_MTU = 1500


def io_error_reason(what: str, e: OSError) -> str:
    """The drop reason of a failed send or write: ``what`` + the errno name
    (udp_send_enobufs)."""
    return what + errno.errorcode.get(e.errno, "error").lower()


class SegmentSocket(Protocol):
    """What a train needs of the engine's UDP socket (udp.py's EngineSocket)."""

    port: int

    def send_segments(self, iov: list, dst_ip: str, segment_size: int) -> None: ...

    def send_to(self, payload: bytes, addr: tuple) -> Any: ...


class TrainSender:
    """Trains of datagrams on the engine's socket, sized for the underlay MTU."""

    def __init__(self, sock: SegmentSocket, dropped: dict[str, int],
                 underlay_mtu: int = DEFAULT_UNDERLAY_MTU):
        self.sock = sock
        self.dropped = dropped
        self.udp_segment_works = True   # False once the kernel refused UDP_SEGMENT
        self.set_underlay_mtu(underlay_mtu)

    def set_underlay_mtu(self, mtu: int) -> None:
        self.underlay_mtu = mtu
        self.chunk = chunk_size(mtu)    # frame bytes per segment

    def send_train(self, dst_ip: str, payloads: list[bytes]) -> None:
        """Plain datagrams of one super-frame, all the size of the first but the
        last: in trains of one sendmsg (UDP_SEGMENT) when they fit the underlay,
        else, and for what a train could not send, one by one."""
        sock = self.sock
        size = len(payloads[0])
        at = 0
        if size + UDP_IP_OVERHEAD <= self.underlay_mtu and self.udp_segment_works:
            per_send = min(SEGMENTS_PER_SEND, BYTES_PER_SEND // size)
            send = sock.send_segments
            while at < len(payloads):
                chunk = payloads[at:at + per_send]
                try:
                    send(chunk, dst_ip, size)
                except OSError as e:
                    if e.errno == errno.EINVAL or e.errno == errno.EMSGSIZE:
                        break     # the path to it is narrower: this train one by one
                    if e.errno in (errno.ENOPROTOOPT, errno.EIO):
                        log.warning("UDP_SEGMENT refused (%s): plain trains go one "
                                    "datagram at a time", e.strerror)
                        self.udp_segment_works = False
                        break
                    reason = io_error_reason("udp_send_", e)
                    self.dropped[reason] = self.dropped.get(reason, 0) + len(chunk)
                at += len(chunk)
        sendto = sock.send_to
        addr = (dst_ip, sock.port)
        for payload in payloads[at:]:
            try:
                sendto(payload, addr)
            except OSError as e:
                count(self.dropped, io_error_reason("udp_send_", e))

    def send_fast(self, action: SendFast) -> None:
        """The segments of one super-frame, one sendmsg per UDP_SEGMENT train."""
        chunk = self.chunk
        send = self.sock.send_segments
        try:
            for iov in segment_sends(action.vid_raw, action.frame_id, action.packet, chunk,
                                     action.opcode):
                send(iov, action.dst_ip, chunk + SEGMENT_HEADER_LEN)
        except ValueError:
            count(self.dropped, "fast_too_big")
        except OSError as e:
            count(self.dropped, io_error_reason("udp_send_", e))
