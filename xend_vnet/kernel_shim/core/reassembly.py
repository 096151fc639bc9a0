"""Reassembly of id-5 segments into whole packets, bounded, sans-IO (docs/performance.md).

Frames in flight are a bounded table (bounds.py, docs/security.md "Resource
limits") per vnet and per sender: a sender at its bound gives up its own
oldest frame; a vnet at its bound keeps the frames it is putting together
and refuses new ones (counted), so a spoofer fills only the shares of the
vnets and addresses it names, never evicts other senders' frames.  A
planted segment can at worst lose a frame: a secured vnet's super-frame is
verified whole before anything is learned or delivered (design.md 7).
"""

from __future__ import annotations

from ..wire.codec import DecodeError
from ..wire.offload import MAX_PACKET, MIN_SEGMENT, check_packet
from ..wire.segments import FAST_SEGMENT, MSG_FAST, SEGMENT_HEADER_LEN, _SEGMENT, decode_segment
from .bounds import BoundedTable, Entry

REASSEMBLY_TIMEOUT = 1.0
EVICT_AGE = 0.05           # a full vnet's oldest frame older than this gives way

Key = tuple[str, bytes, int]     # (sender, vnet id, frame id)


class _Partial(Entry):
    __slots__ = ("count", "got", "opcode", "parts", "size")

    def __init__(self, src_ip: str, opcode: int, vid_raw: bytes, count: int, now: float):
        super().__init__(vid_raw, src_ip, now)
        self.opcode = opcode
        self.count = count
        self.got = 0
        self.size = 0
        self.parts: list = [None] * count


class Reassembler:
    """Segments in, whole packets out, with bounded memory: the frames in
    flight bounded per vnet and per sender, each given ``REASSEMBLY_TIMEOUT``
    seconds (a lost segment loses its frame only; TCP resends it)."""

    def __init__(self, min_gso: int = MIN_SEGMENT) -> None:
        self.table = self._partial = BoundedTable("reassembly", REASSEMBLY_TIMEOUT)
        self.min_gso = min_gso
        self.expired = 0

    def __len__(self) -> int:
        return len(self._partial)

    def add(self, src_ip: str, payload: bytes,
            now: float) -> tuple[int, bytes, bytes] | None:
        """``(opcode, vnet id, data)`` once ``payload`` completes a frame, else
        None; the data of opcode 1 are a checked packet, of opcode 2 a secured
        message still to verify.

        DecodeError for a malformed or inconsistent segment (its frame is dropped)."""
        opcode, vid_raw, frame_id, index, count = decode_segment(payload)
        if count == 1:
            return opcode, vid_raw, self._complete(opcode, payload[SEGMENT_HEADER_LEN:])
        key = (src_ip, vid_raw, frame_id)
        p = self._partial_for(key, opcode, vid_raw, count, now)
        if p.parts[index] is not None:
            raise DecodeError("fast_duplicate", f"segment {index} of frame {frame_id}")
        data = payload[SEGMENT_HEADER_LEN:]
        self._grow(key, p, len(data))
        p.parts[index] = data
        p.got += 1
        return self._done(key, p)

    def add_train(self, src_ip: str, data: bytes, gso: int,
                  now: float) -> tuple[int, bytes, bytes] | None:
        """``add`` for a train of segments received in one ``recvmsg`` (UDP_GRO,
        ``gso`` bytes each but the last): consecutive segments of one frame, as
        one ``sendmsg`` of ours sends them, are taken in one step, without a
        bytes object per segment.  DecodeError("fast_train_mixed"), with nothing
        changed, when the train is anything else: the caller then gives the
        segments to ``add`` one by one."""
        opcode, vid_raw, frame_id, index, count = decode_segment(data)
        n = -(-len(data) // gso)
        if index + n > count or gso <= SEGMENT_HEADER_LEN:
            raise DecodeError("fast_train_mixed")
        pack = _SEGMENT.pack
        view = memoryview(data)
        parts = []
        for k in range(n):
            at = k * gso
            if (view[at:at + SEGMENT_HEADER_LEN] != pack(MSG_FAST, opcode, vid_raw, frame_id,
                                                          index + k, count)
                    or at + SEGMENT_HEADER_LEN >= len(data)):
                raise DecodeError("fast_train_mixed")
            parts.append(view[at + SEGMENT_HEADER_LEN:at + gso])
        if n == count:
            return opcode, vid_raw, self._complete(opcode, b"".join(parts))
        key = (src_ip, vid_raw, frame_id)
        p = self._partial_for(key, opcode, vid_raw, count, now)
        if any(p.parts[index + k] is not None for k in range(n)):
            raise DecodeError("fast_duplicate", f"segments of frame {frame_id}")
        self._grow(key, p, len(data) - n * SEGMENT_HEADER_LEN)
        p.parts[index:index + n] = parts
        p.got += n
        return self._done(key, p)

    def _partial_for(self, key: Key, opcode: int, vid_raw: bytes, count: int,
                     now: float) -> _Partial:
        """The frame being put together under ``key``, made on its first segment."""
        p = self._partial.get(key)
        if p is None:
            self._make_room(key[0], vid_raw, now)
            p = _Partial(key[0], opcode, vid_raw, count, now)
            self._partial.insert(key, p)
        elif p.count != count or p.opcode != opcode:
            # Drop the newcomer, keep the frame: a spoofed segment must not
            # destroy a legitimate one being put together.
            raise DecodeError("fast_inconsistent", f"frame {key[2]} from {key[0]}")
        return p

    def _make_room(self, src_ip: str, vid_raw: bytes, now: float) -> None:
        """Room for one more frame of ``src_ip`` in ``vid_raw``: frames past their
        time go, then the sender's own oldest; DecodeError when the vnet (or
        the table) is full of frames still being put together."""
        t = self._partial
        why = t.full(vid_raw, src_ip)
        if why is None:
            return
        self.expired += len(t.expire(now))
        why = t.full(vid_raw, src_ip)
        if why == t.kind + "_source_full":
            t.remove(t.oldest_of(vid_raw, src_ip))
            self.expired += 1
            why = t.full(vid_raw, src_ip)
        if why == t.kind + "_vnet_full":
            # A legitimate frame completes within milliseconds: the vnet's
            # oldest frame, stalled past EVICT_AGE, gives way to a new one, so
            # spoofed first segments from ever new sources cannot hold every
            # slot for a whole REASSEMBLY_TIMEOUT (docs/security.md).
            oldest = t.any_key(vid_raw)
            if oldest is not None and now - t[oldest].stamp > EVICT_AGE:
                t.remove(oldest)
                self.expired += 1
                why = t.full(vid_raw, src_ip)
        if why is not None:
            raise DecodeError(why, f"frame from {src_ip}")

    def _grow(self, key: Key, p: _Partial, size: int) -> None:
        p.size += size
        if p.size > MAX_PACKET:
            self._partial.remove(key)
            raise DecodeError("fast_too_big", f"frame {key[2]} from {key[0]}")

    def _done(self, key: Key, p: _Partial) -> tuple[int, bytes, bytes] | None:
        if p.got < p.count:
            return None
        self._partial.remove(key)
        return p.opcode, p.part, self._complete(p.opcode, b"".join(p.parts))

    def sweep(self, now: float) -> None:
        if self._partial:
            self.expired += len(self._partial.expire(now))

    def remove_vnet(self, vid_raw: bytes) -> None:
        self._partial.remove_part(vid_raw)

    def _complete(self, opcode: int, data: bytes) -> bytes:
        """Opcode 1 data are a packet for the TAP: its virtio_net_hdr is checked
        against its frame (wire/offload.py); opcode 2 data are verified later."""
        return check_packet(data, self.min_gso) if opcode == FAST_SEGMENT else data
