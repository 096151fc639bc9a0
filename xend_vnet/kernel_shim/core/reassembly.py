"""Reassembly of id-5 segments into whole packets, bounded, sans-IO (docs/performance.md)."""

from __future__ import annotations

from ..wire.codec import DecodeError
from ..wire.offload import MAX_PACKET, check_packet
from ..wire.segments import FAST_SEGMENT, MSG_FAST, SEGMENT_HEADER_LEN, _SEGMENT, decode_segment

REASSEMBLY_TIMEOUT = 1.0
REASSEMBLY_LIMIT = 64            # frames in flight at once, all senders together


class _Partial:
    __slots__ = ("count", "got", "opcode", "parts", "size", "started", "vid_raw")

    def __init__(self, opcode: int, vid_raw: bytes, count: int, now: float):
        self.opcode = opcode
        self.vid_raw = vid_raw
        self.count = count
        self.got = 0
        self.size = 0
        self.parts: list = [None] * count
        self.started = now


class Reassembler:
    """Segments in, whole packets out, with bounded memory: at most
    ``REASSEMBLY_LIMIT`` frames in flight, each given ``REASSEMBLY_TIMEOUT``
    seconds (a lost segment loses its frame only; TCP resends it)."""

    def __init__(self) -> None:
        self._partial: dict[tuple[str, int], _Partial] = {}
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
            return opcode, vid_raw, _complete(opcode, payload[SEGMENT_HEADER_LEN:])
        key = (src_ip, frame_id)
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
            return opcode, vid_raw, _complete(opcode, b"".join(parts))
        key = (src_ip, frame_id)
        p = self._partial_for(key, opcode, vid_raw, count, now)
        if any(p.parts[index + k] is not None for k in range(n)):
            raise DecodeError("fast_duplicate", f"segments of frame {frame_id}")
        self._grow(key, p, len(data) - n * SEGMENT_HEADER_LEN)
        p.parts[index:index + n] = parts
        p.got += n
        return self._done(key, p)

    def _partial_for(self, key: tuple[str, int], opcode: int, vid_raw: bytes, count: int,
                     now: float) -> _Partial:
        """The frame being put together under ``key``, made on its first segment."""
        p = self._partial.get(key)
        if p is None:
            if len(self._partial) >= REASSEMBLY_LIMIT:
                self._expire(now)
            p = self._partial[key] = _Partial(opcode, vid_raw, count, now)
        elif p.count != count or p.vid_raw != vid_raw or p.opcode != opcode:
            # Drop the newcomer, keep the frame: a spoofed segment must not
            # destroy a legitimate one being put together.
            raise DecodeError("fast_inconsistent", f"frame {key[1]} from {key[0]}")
        return p

    def _grow(self, key: tuple[str, int], p: _Partial, size: int) -> None:
        p.size += size
        if p.size > MAX_PACKET:
            del self._partial[key]
            raise DecodeError("fast_too_big", f"frame {key[1]} from {key[0]}")

    def _done(self, key: tuple[str, int], p: _Partial) -> tuple[int, bytes, bytes] | None:
        if p.got < p.count:
            return None
        del self._partial[key]
        return p.opcode, p.vid_raw, _complete(p.opcode, b"".join(p.parts))

    def _expire(self, now: float) -> None:
        """Drop frames past their time; when none is, the oldest (the table is full)."""
        old = [k for k, p in self._partial.items() if now - p.started > REASSEMBLY_TIMEOUT]
        if not old:
            old = [min(self._partial, key=lambda k: self._partial[k].started)]
        for k in old:
            del self._partial[k]
        self.expired += len(old)

    def sweep(self, now: float) -> None:
        if self._partial:
            old = [k for k, p in self._partial.items() if now - p.started > REASSEMBLY_TIMEOUT]
            for k in old:
                del self._partial[k]
            self.expired += len(old)


def _complete(opcode: int, data: bytes) -> bytes:
    return check_packet(data) if opcode == FAST_SEGMENT else data
