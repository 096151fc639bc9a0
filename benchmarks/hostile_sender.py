"""The processes benchmarks/hostile.py runs inside its namespaces.

``send``: one attacker sender: the packets of one kind (hostile_packets.py)
at a given rate for a given time, from a UDP socket (to the group, port
1798), a raw socket (spoofed VFWD) or a TAP with IFF_VNET_HDR on a vnet
bridge (the domain-side kinds); on exit it writes what it really sent.

``poll``: times ``(engine.status)`` on one engine's control socket every
``--interval`` seconds, one JSON line per answer (design.md 6).

``ask``: one control request, the reply on stdout.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import signal
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from hostile_packets import KINDS, Forger, RateSchedule, Target  # noqa: E402
from hostile_report import reported_tables  # noqa: E402

from xend_vnet import sxp  # noqa: E402
from xend_vnet.engine_client import EngineClient, EngineError  # noqa: E402
from xend_vnet.kernel_shim.security import keys  # noqa: E402
from xend_vnet.kernel_shim.wire.codec import VARP_PORT  # noqa: E402

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
_stop: list[int] = []


def _on_term(*_args) -> None:
    _stop.append(1)


def open_output(kind: str, opts: argparse.Namespace):
    """A function that sends one packet, for the kind's source."""
    source = KINDS[kind][0]
    if source == "tap":
        fd = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", opts.tap.encode(),
                                               IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
        return lambda packet: os.write(fd, packet)
    if source == "raw":
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        dst = (opts.group, 0)
        return lambda packet: s.sendto(packet, dst)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((opts.bind, 0))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(opts.bind))
    dst = (opts.group, VARP_PORT)
    return lambda packet: s.sendto(packet, dst)


def send(opts: argparse.Namespace) -> None:
    key = keys.read_key_file(opts.key_file) if opts.key_file else b"\0" * 32
    target = Target(secured_key=key, group=opts.group)
    forger = Forger(opts.kind, target, opts.sender, opts.seed)
    out = open_output(opts.kind, opts)
    errors: dict[str, int] = {}
    start = time.monotonic()
    schedule = RateSchedule(opts.rate, start)
    deadline = start + opts.seconds
    while not _stop:
        now = time.monotonic()
        if now >= deadline:
            break
        n = schedule.due(now)
        if n == 0:
            time.sleep(min(schedule.wait(now), deadline - now))
            continue
        for _ in range(n):
            try:
                out(forger.next())
            except OSError as e:
                name = errno.errorcode.get(e.errno, str(e.errno))
                errors[name] = errors.get(name, 0) + 1
        schedule.done(n)
    elapsed = time.monotonic() - start
    failed = sum(errors.values())
    report = {"kind": opts.kind, "sender": opts.sender, "sent": schedule.sent - failed,
              "failed": errors, "skipped": schedule.skipped, "seconds": elapsed}
    with open(opts.report + ".tmp", "w") as f:
        json.dump(report, f)
    os.rename(opts.report + ".tmp", opts.report)


def poll(opts: argparse.Namespace) -> None:
    client = EngineClient(opts.control, timeout=opts.timeout)
    with open(opts.out, "a") as f:
        while not _stop:
            t0 = time.monotonic()
            line: dict = {"t": time.time()}
            try:
                text = client.request("(engine.status)")
                line["ms"] = (time.monotonic() - t0) * 1000
                forms = sxp.parse_all(text)
                line["tables"] = reported_tables(forms[0][1:] if forms else [])
            except (EngineError, OSError, ValueError) as e:
                line["ms"] = (time.monotonic() - t0) * 1000
                line["error"] = str(e)
            f.write(json.dumps(line) + "\n")
            f.flush()
            time.sleep(max(0.0, opts.interval - (time.monotonic() - t0)))


def ask(opts: argparse.Namespace) -> None:
    sys.stdout.write(EngineClient(opts.control, timeout=opts.timeout).request(opts.request))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("send")
    s.add_argument("--kind", required=True, choices=list(KINDS))
    s.add_argument("--rate", type=float, required=True)
    s.add_argument("--seconds", type=float, required=True)
    s.add_argument("--sender", type=int, default=0)
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--report", required=True)
    s.add_argument("--bind", default="0.0.0.0")
    s.add_argument("--group", default="224.10.0.1")
    s.add_argument("--tap", default="")
    s.add_argument("--key-file", default="")
    q = sub.add_parser("poll")
    q.add_argument("--control", required=True)
    q.add_argument("--out", required=True)
    q.add_argument("--interval", type=float, default=0.5)
    q.add_argument("--timeout", type=float, default=10.0)
    a = sub.add_parser("ask")
    a.add_argument("--control", required=True)
    a.add_argument("--request", required=True)
    a.add_argument("--timeout", type=float, default=10.0)
    opts = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    {"send": send, "poll": poll, "ask": ask}[opts.mode](opts)


if __name__ == "__main__":
    main()
