#!/usr/bin/env python3
"""A naive CPython TAP-to-UDP forwarder: the floor of a Python engine.

docs/performance.md compares the engine with "a naive CPython TAP-to-UDP forwarder"; this
is one, measured in the same run as everything else (throughput.py's
``naive`` row).  It does only what any Python tunnel must: one TAP (no
offloads), one UDP socket, an epoll loop, one ``read`` and one ``sendto``
per frame one way, one ``recv`` and one ``write`` per datagram the other,
with the legacy data header (protocol.md 4.1) put on and checked.  No learning,
no multicast, no counters, no security, one fixed peer: what it costs is
what CPython itself costs per packet on this machine, so its ping round trip
is the lowest a CPython engine can reach here.  A benchmark baseline, not
part of the product (it uses nothing of it).

    naive_forwarder.py TAP PEER_IP [--port 1798] [--vnet 99]

It creates TAP (and leaves bringing it up and bridging it to the caller) and
runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import select
import signal
import socket
import struct
import sys

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000
# protocol.md 4.1: VnetMsgHdr (id 2, opcode 0), the EtherIP bytes 00 40 of the
# x86 legacy layout and the 128-bit vnet id, then the Ethernet frame.
DATA_PREFIX = b"\x00\x02\x00\x00\x00\x40"
BATCH = 64


def open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def forward(tap: int, sock: socket.socket, peer: tuple[str, int], header: bytes) -> None:
    ep = select.epoll()
    ep.register(tap, select.EPOLLIN)
    ep.register(sock.fileno(), select.EPOLLIN)
    skip = len(header)
    while True:
        for fd, _ in ep.poll():
            try:
                for _ in range(BATCH):
                    if fd == tap:
                        sock.sendto(header + os.read(tap, 65536), peer)
                    else:
                        data = sock.recv(65536)
                        if data.startswith(header):
                            os.write(tap, data[skip:])
            except BlockingIOError:
                pass
            except OSError:
                pass            # a frame the kernel refused: dropped, as any tunnel would


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("tap")
    p.add_argument("peer")
    p.add_argument("--port", type=int, default=1798)
    p.add_argument("--vnet", default="99", help="vnet id in hex (default 99)")
    opts = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    header = DATA_PREFIX + int(opts.vnet, 16).to_bytes(16, "big")
    tap = open_tap(opts.tap)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    sock.bind(("", opts.port))
    sock.setblocking(False)
    try:
        forward(tap, sock, (opts.peer, opts.port), header)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
