"""The engine's UDP socket on port 1798: unicast, the VARP group, all sends.

(protocol.md 2, 3.1, 9.1)

One socket bound to ``0.0.0.0:port`` receives unicast and the group and
sends everything, so the source port is always the engine's port.  It asks
for IP_PKTINFO so the core can tell group traffic from unicast (protocol.md
4.4 step 1), sends group traffic with TTL 1 like legacy vnetd and with loop
off (legacy left it on and dropped its own packets after the fact, protocol.md
3.1), clears DF so the stack fragments large frames like legacy UDP mode
(protocol.md 4.6), and sizes its buffers for load (design.md 11: the legacy
208 KB buffer overflowed under TCP).  Joining the group may fail while the host has no
address or route yet; the daemon retries (design.md 5).

Between our own engines (wire/segments.py) the socket sends the
segments of a super-frame with one ``sendmsg`` and ``UDP_SEGMENT`` (the
kernel cuts them at the given size), and with ``UDP_GRO`` receives a train
of equal-sized datagrams from one sender in one ``recvmsg``, which the core
takes as a train (``EngineCore.receive_train``).
"""

from __future__ import annotations

import socket
import struct
import sys

# Linux values; Python 3.11's socket module has no names for these.
IP_PKTINFO = 8
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DONT = 0
IP_MULTICAST_ALL = 49
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104

DEFAULT_BUFFER = 4 * 1024 * 1024
MAX_DATAGRAM = 65535
_ANCILLARY = socket.CMSG_SPACE(12) + socket.CMSG_SPACE(4)  # in_pktinfo, GRO segment size


class EngineSocket:
    """The bound, non-blocking UDP socket and its group membership."""

    def __init__(self, port: int, mcaddr: str, mcast_ttl: int = 1,
                 ifindex: int = 0, buffer_size: int = DEFAULT_BUFFER, gro: bool = False):
        self.port = port
        self.mcaddr = mcaddr
        self.mcast_ttl = mcast_ttl
        self.ifindex = ifindex
        self.joined = False
        self.join_error: str | None = None
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_IP, IP_PKTINFO, 1)
            # Only the groups this socket joined (design.md 11: the default 1
            # would deliver every group any socket on the host joined).
            s.setsockopt(socket.SOL_IP, IP_MULTICAST_ALL, 0)
            s.setsockopt(socket.SOL_IP, socket.IP_MULTICAST_LOOP, 0)
            s.setsockopt(socket.SOL_IP, socket.IP_MULTICAST_TTL, mcast_ttl)
            s.setsockopt(socket.SOL_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            if gro:
                s.setsockopt(SOL_UDP, UDP_GRO, 1)
            self.rcvbuf = _set_buffer(s, socket.SO_RCVBUF, SO_RCVBUFFORCE, buffer_size)
            self.sndbuf = _set_buffer(s, socket.SO_SNDBUF, SO_SNDBUFFORCE, buffer_size)
            s.bind(("0.0.0.0", port))
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        self.sock = s
        self.pin_source(None)

    def fileno(self) -> int:
        return self.sock.fileno()

    def _membership(self, option: int, group: str) -> None:
        mreqn = struct.pack("4s4si", socket.inet_aton(group), b"\0" * 4, self.ifindex)
        self.sock.setsockopt(socket.SOL_IP, option, mreqn)

    def try_join(self) -> bool:
        """Join the group on ``ifindex`` (0: by route) if not joined yet.

        False, with ``join_error``, while it cannot: no address or route yet.
        """
        if self.joined:
            return True
        try:
            if self.ifindex:
                # Group traffic leaves by the chosen device, not by the route.
                self.sock.setsockopt(socket.SOL_IP, socket.IP_MULTICAST_IF,
                                     struct.pack("4s4si", b"\0" * 4, b"\0" * 4, self.ifindex))
            self._membership(socket.IP_ADD_MEMBERSHIP, self.mcaddr)
        except OSError as e:
            self.join_error = e.strerror or str(e)
            return False
        self.joined = True
        self.join_error = None
        return True

    def check_membership(self, igmp_path: str = "/proc/net/igmp") -> bool:
        """Whether the host still holds the group; when its device went away, the
        kernel dropped the membership silently, so forget it and join again."""
        if not self.joined:
            return False
        key = "%08X" % struct.unpack("<I", socket.inet_aton(self.mcaddr))[0]
        try:
            with open(igmp_path) as f:
                held = any(line.split()[:1] == [key] for line in f)
        except OSError:
            return True   # cannot tell: keep what we believe
        if not held:
            try:
                self._membership(socket.IP_DROP_MEMBERSHIP, self.mcaddr)
            except OSError:
                pass  # already gone with its device
            self.joined = False
        return held

    def set_group(self, mcaddr: str, mcast_ttl: int | None = None) -> bool:
        """Leave the old group and join ``mcaddr`` (varp.mcaddr, protocol.md 3.1)."""
        socket.inet_aton(mcaddr)
        if self.joined:
            try:
                self._membership(socket.IP_DROP_MEMBERSHIP, self.mcaddr)
            except OSError:
                pass  # the interface went away and took the membership with it
            self.joined = False
        self.mcaddr = mcaddr
        if mcast_ttl is not None:
            self.sock.setsockopt(socket.SOL_IP, socket.IP_MULTICAST_TTL, mcast_ttl)
            self.mcast_ttl = mcast_ttl
        return self.try_join()

    def recv_batch(self, limit: int) -> list[tuple[bytes, str, str, int]]:
        """Up to ``limit`` receives as (payload, source ip, destination ip, gso):
        ``gso`` is 0 for one datagram, else the size of each datagram of the
        train ``payload`` holds (UDP_GRO; the last may be shorter)."""
        out = []
        recvmsg = self.sock.recvmsg
        ntoa = socket.inet_ntoa
        try:
            for _ in range(limit):
                data, ancdata, _flags, addr = recvmsg(MAX_DATAGRAM, _ANCILLARY)
                dst = "0.0.0.0"
                gso = 0
                for level, kind, cdata in ancdata:
                    if level == socket.SOL_IP and kind == IP_PKTINFO and len(cdata) >= 12:
                        dst = ntoa(cdata[8:12])  # ipi_addr: the header's destination
                    elif level == SOL_UDP and kind == UDP_GRO and len(cdata) >= 2:
                        gso = int.from_bytes(cdata[:2], sys.byteorder)
                out.append((data, addr[0], dst, gso if 0 < gso < len(data) else 0))
        except BlockingIOError:
            pass
        return out

    def sendto(self, payload: bytes, dst_ip: str) -> None:
        self.send_to(payload, (dst_ip, self.port))

    def pin_source(self, address: str | None) -> None:
        """Send from ``address`` (``vnetd --address``, a local address) instead of
        the source the routing table picks, so hosts learning from the outer
        source (clear vnets, legacy hosts) learn the announced address."""
        self.source = address
        if address is None:
            self._source_cmsg = []
            self.send_to = self.sock.sendto          # the plain, fastest call
            return
        # struct in_pktinfo: ifindex 0, ipi_spec_dst = the source, ipi_addr unused.
        self._source_cmsg = [(socket.SOL_IP, IP_PKTINFO,
                              struct.pack("=I4s4s", 0, socket.inet_aton(address), bytes(4)))]
        cmsg, sendmsg = self._source_cmsg, self.sock.sendmsg

        def send_to(payload: bytes, addr: tuple) -> int:
            return sendmsg((payload,), cmsg, 0, addr)
        self.send_to = send_to

    def send_segments(self, iov: list, dst_ip: str, segment_size: int) -> None:
        """Send the datagrams gathered in ``iov``, cut every ``segment_size``
        bytes by the kernel (UDP_SEGMENT); a single one goes as it is."""
        if sum(map(len, iov)) > segment_size:
            gso = segment_size.to_bytes(2, sys.byteorder)
            self.sock.sendmsg(iov, [(SOL_UDP, UDP_SEGMENT, gso), *self._source_cmsg], 0,
                              (dst_ip, self.port))
        else:
            self.sock.sendmsg(iov, self._source_cmsg, 0, (dst_ip, self.port))

    def close(self) -> None:
        self.sock.close()


def _set_buffer(s: socket.socket, option: int, force: int, size: int) -> int:
    """Set a buffer size, past rmem_max/wmem_max when root may; return the size in effect."""
    try:
        s.setsockopt(socket.SOL_SOCKET, force, size)
    except PermissionError:
        s.setsockopt(socket.SOL_SOCKET, option, size)
    return s.getsockopt(socket.SOL_SOCKET, option)
