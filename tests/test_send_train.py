"""The daemon's sending of plain trains (SendTrain): UDP_SEGMENT chunks and fallbacks."""

from __future__ import annotations

import errno
import types

from xend_vnet.kernel_shim.core.engine import SendTrain
from xend_vnet.kernel_shim.daemon import Vnetd


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


def engine(sock: FakeSocket, mtu: int = 1500) -> types.SimpleNamespace:
    fake = types.SimpleNamespace(udp=sock, underlay_mtu=mtu, _udp_segment_works=True,
                                 io_dropped={})
    fake._io_drop = types.MethodType(Vnetd._io_drop, fake)
    fake._io_error = types.MethodType(Vnetd._io_error, fake)
    return fake


def payloads(n: int, size: int) -> list[bytes]:
    return [bytes([i % 256]) * size for i in range(n - 1)] + [b"z" * (size // 2)]


def send(fake, train: list[bytes]) -> None:
    Vnetd._send_train(fake, SendTrain("192.0.2.2", train))


def test_a_train_goes_in_udp_segment_chunks_in_order():
    for n, size, chunks in ((45, 1450, [45]), (100, 1000, [64, 36]), (2, 1472, [2])):
        sock = FakeSocket()
        train = payloads(n, size)
        send(engine(sock), train)
        assert sock.trains == chunks and sock.datagrams == train


def test_datagrams_that_do_not_fit_the_underlay_go_one_by_one():
    sock = FakeSocket()
    train = payloads(10, 1500)
    send(engine(sock), train)
    assert sock.calls == 0 and sock.datagrams == train


def test_a_narrower_path_sends_the_rest_of_that_train_one_by_one():
    sock = FakeSocket(fail={2: errno.EINVAL})
    fake = engine(sock)
    train = payloads(100, 1000)
    send(fake, train)
    assert sock.datagrams == train                      # nothing lost, nothing twice
    assert fake._udp_segment_works and fake.io_dropped == {}
    send(fake, train)
    assert sock.trains == [64, 64, 36]                  # the next train tries again


def test_a_failed_chunk_counts_each_datagram_and_the_rest_still_goes():
    sock = FakeSocket(fail={1: errno.ENOBUFS})
    fake = engine(sock)
    train = payloads(100, 1000)
    send(fake, train)
    assert fake.io_dropped == {"udp_send_enobufs": 64}
    assert sock.datagrams == train[64:]


def test_a_kernel_without_udp_segment_is_remembered():
    sock = FakeSocket(fail={1: errno.ENOPROTOOPT})
    fake = engine(sock)
    train = payloads(45, 1450)
    send(fake, train)
    send(fake, train)
    assert not fake._udp_segment_works
    assert sock.calls == 1 and sock.datagrams == train + train
