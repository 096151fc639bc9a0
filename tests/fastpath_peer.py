"""Helpers of tests/test_e2e_fastpath.py, run as scripts inside namespaces.

``peer``: a plain-only vnet host, as a legacy vnetd would be: a TAP without
offloads and the UDP port 1798 joined to the group; every data message
(id 2) received is checked (no frame larger than the MTU allows, IPv4
header checksum, TCP and UDP checksums of unfragmented packets) and
written to the TAP, every frame read from the TAP is flooded to the group.
Any id-5 message counts as a violation: it must never reach a host that
has not shown it understands it.  On SIGTERM it writes its report (JSON).

``capture``: print, as JSON hex, every frame of one EtherType seen on an
interface for some seconds, 802.1Q tags put back from PACKET_AUXDATA.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import select
import signal
import socket
import struct
import sys
import time

SOL_PACKET = 263
PACKET_AUXDATA = 8
TP_STATUS_VLAN_VALID = 0x10
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
DATA_PREFIX = b"\x00\x02\x00\x00\x00\x40"


def ones_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def check_frame(frame: bytes, max_len: int) -> str | None:
    """None when the frame is one a legacy host can take, else what is wrong."""
    if len(frame) > max_len:
        return f"frame of {len(frame)} bytes"
    off = 12
    while frame[off:off + 2] in (b"\x81\x00", b"\x88\xa8"):
        off += 4
    if frame[off:off + 2] != b"\x08\x00":
        return None
    ip = frame[off + 2:]
    ihl = (ip[0] & 15) * 4
    if ones_sum(ip[:ihl]) != 0xFFFF:
        return "IPv4 header checksum"
    total = int.from_bytes(ip[2:4], "big")
    frag = int.from_bytes(ip[6:8], "big")
    proto = ip[9]
    if frag & 0x3FFF or proto not in (6, 17):
        return None
    l4 = ip[ihl:total]
    if proto == 17 and l4[6:8] == b"\0\0":
        return None          # UDP without checksum
    pseudo = ip[12:20] + struct.pack("!BBH", 0, proto, len(l4))
    if ones_sum(pseudo + l4) != 0xFFFF:
        return ("TCP" if proto == 6 else "UDP") + " checksum"
    return None


def peer(opts: argparse.Namespace) -> None:
    report = {"frames": 0, "tcp_or_udp": 0, "bad": [], "bad_count": 0, "fast_messages": 0,
              "sent": 0}
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    tap = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(tap, TUNSETIFF, struct.pack("16sH", opts.tap.encode(), IFF_TAP | IFF_NO_PI))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(("0.0.0.0", 1798))
    s.setsockopt(socket.SOL_IP, socket.IP_ADD_MEMBERSHIP,
                 socket.inet_aton(opts.mcaddr) + socket.inet_aton("0.0.0.0"))
    s.setsockopt(socket.SOL_IP, socket.IP_MULTICAST_LOOP, 0)
    s.setsockopt(socket.SOL_IP, socket.IP_MULTICAST_TTL, 1)
    s.setblocking(False)
    vid = bytes.fromhex(opts.vnet.rjust(32, "0"))
    while not stop:
        try:
            ready, _, _ = select.select([s, tap], [], [], 0.2)
        except InterruptedError:
            continue
        if s in ready:
            while True:
                try:
                    data, (src, _) = s.recvfrom(65535)
                except BlockingIOError:
                    break
                if data[:2] == b"\x00\x05":
                    report["fast_messages"] += 1
                elif data.startswith(DATA_PREFIX) and data[6:22] == vid:
                    frame = data[22:]
                    report["frames"] += 1
                    problem = check_frame(frame, opts.mtu + 18)
                    if problem:
                        report["bad_count"] += 1
                        if len(report["bad"]) < 10:
                            report["bad"].append(f"from {src}: {problem}")
                    elif frame[12:14] == b"\x08\x00" and frame[23] in (6, 17):
                        report["tcp_or_udp"] += 1
                    try:
                        os.write(tap, frame)
                    except OSError:
                        pass
        if tap in ready:
            while True:
                try:
                    frame = os.read(tap, 65536)
                except BlockingIOError:
                    break
                s.sendto(DATA_PREFIX + vid + frame, (opts.mcaddr, 1798))
                report["sent"] += 1
    with open(opts.report + ".tmp", "w") as f:
        json.dump(report, f)
    os.rename(opts.report + ".tmp", opts.report)


def capture(opts: argparse.Namespace) -> None:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.bind((opts.ifname, 0))
    s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    s.settimeout(0.2)
    frames = []
    print("ready", flush=True)
    deadline = time.monotonic() + opts.seconds
    while time.monotonic() < deadline:
        try:
            data, anc, _flags, addr = s.recvmsg(65536, socket.CMSG_SPACE(20))
        except socket.timeout:
            continue
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        for level, kind, cdata in anc:
            if level == SOL_PACKET and kind == PACKET_AUXDATA:
                status, _len, _snap, _mac, _net, tci, tpid = struct.unpack("IIIHHHH", cdata[:20])
                if status & TP_STATUS_VLAN_VALID:
                    data = data[:12] + struct.pack("!HH", tpid or 0x8100, tci) + data[12:]
        if data[12:14] == b"\x81\x00" and data[16:18] == struct.pack("!H", opts.ethertype):
            frames.append(data.hex())
    print(json.dumps(frames), flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="mode", required=True)
    a = sub.add_parser("peer")
    a.add_argument("--tap", required=True)
    a.add_argument("--report", required=True)
    a.add_argument("--vnet", required=True)
    a.add_argument("--mcaddr", default="224.10.0.1")
    a.add_argument("--mtu", type=int, default=1500)
    c = sub.add_parser("capture")
    c.add_argument("--ifname", required=True)
    c.add_argument("--seconds", type=float, default=3.0)
    c.add_argument("--ethertype", type=lambda x: int(x, 0), default=0x88B5)
    opts = p.parse_args()
    peer(opts) if opts.mode == "peer" else capture(opts)


if __name__ == "__main__":
    sys.exit(main())
