"""The engine's raw IPv4 sockets (protocol.md 4.3, 7, 9.1), like legacy vnetd's.

* ``RawSender``: an IPPROTO_RAW socket (IP_HDRINCL implied) that sends the
  re-multicast of a VFWD's inner packet with the original sender as source.
  Multicast loop is off, so the re-send never comes back into this host's
  own UDP socket to be forwarded again (protocol.md 7); a chosen ``--device``
  is the multicast interface, otherwise the route to the group decides.
* ``EtheripSocket``: a raw socket for IP protocol 97 (etherip without UDP,
  protocol.md 4.3), so era-B senders and hand-configured legacy hosts reach us.
  It needs no membership of its own: the UDP socket's join makes the host
  accept the group, and with IP_MULTICAST_ALL left at 1 every raw socket of
  the protocol gets it; the core drops other groups (protocol.md 3.1).

Both need CAP_NET_RAW; the daemon runs without them (and says so) when it
cannot open them.
"""

from __future__ import annotations

import socket
import struct

IPPROTO_ETHERIP = 97
MAX_PACKET = 65535


class RawSender:
    """Header-included IPv4 sends to a multicast group, loop off."""

    def __init__(self, ifindex: int = 0):
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        try:
            s.setsockopt(socket.SOL_IP, socket.IP_MULTICAST_LOOP, 0)
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        self.sock = s
        self.ifindex = 0
        self.set_interface(ifindex)

    def set_interface(self, ifindex: int) -> None:
        """Send group traffic out of ``ifindex`` (0: leave it to the route)."""
        if ifindex and ifindex != self.ifindex:
            self.sock.setsockopt(socket.SOL_IP, socket.IP_MULTICAST_IF,
                                 struct.pack("4s4si", b"\0" * 4, b"\0" * 4, ifindex))
            self.ifindex = ifindex

    def send(self, packet: bytes, dst_ip: str) -> None:
        """``packet`` is a complete IPv4 packet; the kernel fills id 0 and the checksum."""
        self.sock.sendto(packet, (dst_ip, 0))

    def close(self) -> None:
        self.sock.close()


class EtheripSocket:
    """Non-blocking receive of IP protocol 97 packets."""

    def __init__(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_ETHERIP)
        s.setblocking(False)
        self.sock = s

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv_batch(self, limit: int) -> list[tuple[bytes, str, str]]:
        """Up to ``limit`` packets as (bytes after the IPv4 header, source, destination)."""
        out = []
        recv = self.sock.recv
        ntoa = socket.inet_ntoa
        try:
            for _ in range(limit):
                data = recv(MAX_PACKET)
                ihl = (data[0] & 0x0F) * 4 if data else 0
                if ihl < 20 or len(data) < ihl:
                    continue   # the kernel hands over whole headers; be safe anyway
                out.append((data[ihl:], ntoa(data[12:16]), ntoa(data[16:20])))
        except BlockingIOError:
            pass
        return out

    def close(self) -> None:
        self.sock.close()
