"""What the engine core asks the daemon to do: its only output (sans-IO).

Every ``EngineCore.receive_*`` and ``handle_timer`` returns a list of these,
in the order they are to be performed.  The daemon dispatches on the class
(``action.__class__ is SendUdp``) and reads the fields by name.

They are NamedTuples: immutable, with named fields, and the cheapest object
Python builds that is both (one or more per datagram on the data path,
docs/performance.md); nothing reads them by position.
"""

from __future__ import annotations

from typing import NamedTuple, Union

from ...vnet_id import VnetId
from ..wire.segments import FAST_SEGMENT


class SendUdp(NamedTuple):
    """Send ``payload`` from the engine socket to (dst_ip, options.port)."""

    dst_ip: str
    payload: bytes


class SendTrain(NamedTuple):
    """Send each of ``payloads`` as one datagram to (dst_ip, options.port);
    all have the same size but the last, which may be shorter."""

    dst_ip: str
    payloads: list


class DeliverFrame(NamedTuple):
    """Write ``frame`` to the TAP of vnet ``vid``."""

    vid: VnetId
    frame: bytes


class SendFast(NamedTuple):
    """Send ``packet`` (virtio_net_hdr + frame, or for opcode 2 the secured
    message holding them) to ``dst_ip`` as the segments of frame ``frame_id``
    of vnet ``vid_raw`` (segments.segment_sends)."""

    dst_ip: str
    vid_raw: bytes
    frame_id: int
    packet: bytes
    opcode: int = FAST_SEGMENT


class DeliverOffload(NamedTuple):
    """Write ``packet`` (virtio_net_hdr + frame) to vnet ``vid``'s TAP, which has offloads."""

    vid: VnetId
    packet: bytes


class SendRaw(NamedTuple):
    """Send a complete IPv4 packet (header included) to ``dst_ip`` from a raw
    socket with multicast loop off: the re-multicast of a VFWD (protocol.md 7)."""

    dst_ip: str
    packet: bytes


Action = Union[SendUdp, SendTrain, DeliverFrame, SendFast, DeliverOffload, SendRaw]
