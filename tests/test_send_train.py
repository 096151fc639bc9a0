"""Sending plain trains (SendTrain) and segments (SendFast): UDP_SEGMENT
chunks and the fallbacks of datapath/trains.py."""

from __future__ import annotations

import errno

from xend_vnet.kernel_shim.core.engine import SendFast
from xend_vnet.kernel_shim.datapath.trains import TrainSender, io_error_reason
from xend_vnet.kernel_shim.wire.segments import SEGMENT_HEADER_LEN, chunk_size


class FakeSocket:
    """Records what was sent; fails sends as told (by call number)."""

    port = 1798

    def __init__(self, fail: dict[int, int] | None = None):
        self.fail = fail or {}
        self.calls = 0
        self.datagrams: list[bytes] = []
        self.trains: list[int] = []

    def send_segments(self, iov: list, dst_ip: str, size: int) -> None:
        self.calls += 1
        if self.calls in self.fail:
            raise OSError(self.fail[self.calls], "refused")
        assert all(len(p) == size for p in iov[:-1]) and len(iov[-1]) <= size
        assert len(iov) <= 64 and sum(map(len, iov)) <= 65507
        self.trains.append(len(iov))
        self.datagrams += iov

    def send_to(self, payload: bytes, addr: tuple) -> None:
        assert addr == ("192.0.2.2", 1798)
        self.datagrams.append(payload)


def sender(sock: FakeSocket, mtu: int = 1500) -> TrainSender:
    return TrainSender(sock, {}, mtu)


def payloads(n: int, size: int) -> list[bytes]:
    return [bytes([i % 256]) * size for i in range(n - 1)] + [b"z" * (size // 2)]


def test_a_train_goes_in_udp_segment_chunks_in_order():
    for n, size, chunks in ((45, 1450, [45]), (100, 1000, [64, 36]), (2, 1472, [2])):
        sock = FakeSocket()
        train = payloads(n, size)
        sender(sock).send_train("192.0.2.2", train)
        assert sock.trains == chunks and sock.datagrams == train


def test_datagrams_that_do_not_fit_the_underlay_go_one_by_one():
    sock = FakeSocket()
    train = payloads(10, 1500)
    sender(sock).send_train("192.0.2.2", train)
    assert sock.calls == 0 and sock.datagrams == train


def test_a_wider_underlay_takes_larger_datagrams_in_trains():
    sock = FakeSocket()
    trains = sender(sock)
    trains.set_underlay_mtu(9000)
    train = payloads(10, 1500)
    trains.send_train("192.0.2.2", train)
    assert sock.trains == [10] and sock.datagrams == train


def test_a_narrower_path_sends_the_rest_of_that_train_one_by_one():
    sock = FakeSocket(fail={2: errno.EINVAL})
    trains = sender(sock)
    train = payloads(100, 1000)
    trains.send_train("192.0.2.2", train)
    assert sock.datagrams == train                      # nothing lost, nothing twice
    assert trains.udp_segment_works and trains.dropped == {}
    trains.send_train("192.0.2.2", train)
    assert sock.trains == [64, 64, 36]                  # the next train tries again


def test_a_failed_chunk_counts_each_datagram_and_the_rest_still_goes():
    sock = FakeSocket(fail={1: errno.ENOBUFS})
    trains = sender(sock)
    train = payloads(100, 1000)
    trains.send_train("192.0.2.2", train)
    assert trains.dropped == {"udp_send_enobufs": 64}
    assert sock.datagrams == train[64:]


def test_a_kernel_without_udp_segment_is_remembered():
    sock = FakeSocket(fail={1: errno.ENOPROTOOPT})
    trains = sender(sock)
    train = payloads(45, 1450)
    trains.send_train("192.0.2.2", train)
    trains.send_train("192.0.2.2", train)
    assert not trains.udp_segment_works
    assert sock.calls == 1 and sock.datagrams == train + train


def test_the_drops_go_to_the_table_given():
    dropped = {"tap_lost": 1}
    trains = TrainSender(FakeSocket(fail={1: errno.ENOBUFS}), dropped)
    trains.send_train("192.0.2.2", payloads(3, 1000))
    assert dropped == {"tap_lost": 1, "udp_send_enobufs": 3}


class SegmentSocket(FakeSocket):
    """Takes the gather lists of segments (header, data, header, data...)."""

    def __init__(self, fail: dict[int, int] | None = None):
        super().__init__(fail)
        self.sizes: list[int] = []
        self.sent = 0

    def send_segments(self, iov: list, dst_ip: str, size: int) -> None:
        self.calls += 1
        if self.calls in self.fail:
            raise OSError(self.fail[self.calls], "refused")
        self.sizes.append(size)
        self.sent += sum(map(len, iov))


def fast(packet: bytes) -> SendFast:
    return SendFast("192.0.2.2", bytes(16), 7, packet, 5)


def test_a_super_frame_goes_as_segments_of_the_underlay_chunk():
    sock = SegmentSocket()
    trains = sender(sock)
    trains.send_fast(fast(bytes(10) + b"x" * 5000))
    assert set(sock.sizes) == {chunk_size(1500) + SEGMENT_HEADER_LEN}
    assert sock.sent > 5010 and trains.dropped == {}
    trains.set_underlay_mtu(9000)
    trains.send_fast(fast(bytes(10) + b"x" * 5000))
    assert sock.sizes[-1] == chunk_size(9000) + SEGMENT_HEADER_LEN


def test_a_failed_segment_send_is_counted():
    sock = SegmentSocket(fail={1: errno.EPERM})
    trains = sender(sock)
    trains.send_fast(fast(bytes(10) + b"x" * 5000))
    assert trains.dropped == {"udp_send_eperm": 1}


def test_a_segment_size_too_small_is_counted_not_sent():
    sock = SegmentSocket()
    trains = sender(sock, mtu=100)
    trains.send_fast(fast(bytes(10) + b"x" * 500))
    assert trains.dropped == {"fast_too_big": 1} and sock.calls == 0


def test_io_error_reasons_name_the_errno():
    assert io_error_reason("tap_write_", OSError(errno.EIO, "x")) == "tap_write_eio"
    assert io_error_reason("raw_send_", OSError(99999, "x")) == "raw_send_error"
