"""Helpers shared by the engine's end-to-end tests: reading counters and listings, pings."""

from __future__ import annotations

import re
import socket
import struct

from netns import Lab, Vnetd


def _value(child: list):
    if len(child) == 2 and isinstance(child[1], str):
        return child[1]
    return {sub[0]: _value(sub) for sub in child[1:] if isinstance(sub, list) and sub}


def vnet_stats(d: Vnetd) -> dict:
    """``(vnet.stats)`` as {"engine": {...}, <canonical id>: {...}}; numbers stay text."""
    out = {}
    for form in d.call(["vnet.stats"]):
        fields = {c[0]: _value(c) for c in form[1:] if isinstance(c, list) and c}
        key = "engine" if form[0] == "engine_stats" else fields.get("vnet")
        out[key] = fields
    return out


def counter(d: Vnetd, vnet: str, name: str) -> int:
    return int(vnet_stats(d)[vnet][name])


def drops(d: Vnetd) -> dict:
    """Engine-wide receive drops by reason, as ints."""
    return {k: int(v) for k, v in vnet_stats(d)["engine"].get("rx_dropped", {}).items()}


def varp_entries(d: Vnetd) -> dict:
    """``(varp.list)`` entries as {vmac: {"addr": ..., "state": ..., ...}}."""
    entries = {}
    for form in d.call(["varp.list"]):
        if form[:1] == ["ventry"]:
            fields = {c[0]: c[1] if len(c) > 1 else "" for c in form[1:] if isinstance(c, list)}
            entries[fields["vmac"]] = fields
    return entries


def ping(lab: Lab, ns: str, addr: str, count: int = 5, interval: float = 0.2,
         size: int | None = None, deadline: float | None = None, extra=()) -> tuple:
    """(return code, sequence numbers answered, output) of ping in ``ns``."""
    cmd = ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", "2", *extra]
    if size is not None:
        cmd += ["-s", str(size)]
    if deadline is not None:
        cmd += ["-w", str(deadline)]
    p = lab.ns_sh(ns, *cmd, addr, check=False, timeout=60)
    seqs = sorted({int(m) for m in re.findall(r"icmp_seq=(\d+)", p.stdout)})
    return p.returncode, seqs, p.stdout + p.stderr


def no_loss_after_first(seqs: list, count: int) -> bool:
    """Every request after the first answered one got its reply."""
    return bool(seqs) and seqs == list(range(seqs[0], count + 1))


def send_gratuitous_arp(ifname: str, mac: str, ip: str) -> None:
    """One gratuitous ARP request from ``ifname`` (what a migrated guest sends)."""
    hw = bytes.fromhex(mac.replace(":", ""))
    addr = socket.inet_aton(ip)
    frame = (b"\xff" * 6 + hw + b"\x08\x06"
             + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + hw + addr + b"\x00" * 6 + addr)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        s.bind((ifname, 0))
        s.send(frame)
    finally:
        s.close()


def snmp_ip(lab: Lab, ns: str) -> dict:
    """The ``Ip:`` counters of /proc/net/snmp in a namespace."""
    lines = [ln.split() for ln in lab.ns_sh(ns, "cat", "/proc/net/snmp").stdout.splitlines()
             if ln.startswith("Ip:")]
    return dict(zip(lines[0][1:], (int(x) for x in lines[1][1:])))
