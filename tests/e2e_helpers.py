"""Helpers shared by the engine's end-to-end tests: reading counters and listings,
pings, TCP transfers."""

from __future__ import annotations

import re
import socket
import struct
import subprocess
import sys

from netns import KERNEL, USER, EngineProcess, Lab

from xend_vnet.vnet_id import VnetId

KERNEL_COUNTERS = ("kernel_encapsulated", "kernel_decapsulated")


def _value(child: list):
    if len(child) == 2 and isinstance(child[1], str):
        return child[1]
    return {sub[0]: _value(sub) for sub in child[1:] if isinstance(sub, list) and sub}


def vnet_stats(d: EngineProcess) -> dict:
    """``(vnet.stats)`` as {"engine": {...}, <canonical id>: {...}}; numbers stay text."""
    out = {}
    for form in d.call(["vnet.stats"]):
        fields = {c[0]: _value(c) for c in form[1:] if isinstance(c, list) and c}
        key = "engine" if form[0] == "engine_stats" else fields.get("vnet")
        out[key] = fields
    return out


def counter(d: EngineProcess, vnet: str, name: str) -> int:
    return int(vnet_stats(d)[vnet][name])


def kernel_frames(d: EngineProcess, vnet: str) -> int:
    """Frames of ``vnet`` the kernel path has encapsulated and decapsulated
    so far (``vnet.stats``); 0 while it carries none of them."""
    fields = vnet_stats(d)[VnetId.parse(vnet).canonical]
    return sum(int(fields.get(name, 0)) for name in KERNEL_COUNTERS)


def frames_out(d: EngineProcess, vnet: str) -> int:
    """Frames of ``vnet`` sent toward the network, by the engine (tx_packets)
    or by its kernel path (kernel_encapsulated)."""
    fields = vnet_stats(d)[VnetId.parse(vnet).canonical]
    return int(fields["tx_packets"]) + int(fields.get("kernel_encapsulated", 0))


def frames_in(d: EngineProcess, vnet: str) -> int:
    """Frames of ``vnet`` received from the network, by the engine (rx_packets)
    or by its kernel path (kernel_decapsulated)."""
    fields = vnet_stats(d)[VnetId.parse(vnet).canonical]
    return int(fields["rx_packets"]) + int(fields.get("kernel_decapsulated", 0))


def drops(d: EngineProcess) -> dict:
    """Engine-wide receive drops by reason, as ints."""
    return {k: int(v) for k, v in vnet_stats(d)["engine"].get("rx_dropped", {}).items()}


def vnet_paths(d: EngineProcess) -> dict[str, str]:
    """Which data path carries each vnet, as ``vn status`` says (``vnet-path``
    children of ``(engine.status)``): canonical id -> ``kernel``, ``user
    space: <why not the kernel>`` or the VXLAN device's line."""
    (form,) = [f for f in d.call(["engine.status"]) if f[:1] in (["engine"], ["engine.status"])]
    out = {}
    for child in form[1:]:
        if isinstance(child, list) and child[:1] == ["vnet-path"]:
            fields = {c[0]: c[1] for c in child[1:] if isinstance(c, list) and len(c) == 2}
            out[VnetId.parse(fields["id"]).canonical] = fields["path"]
    return out


def on_data_path(path: str, data_path: str) -> bool:
    """``path`` (a ``vnet_paths`` value) is the lab's data path: the kernel,
    or user space (where ``--no-kernel-path`` puts every vnet)."""
    return path == "kernel" if data_path == KERNEL else (
        data_path == USER and path.startswith("user space"))


def varp_entries(d: EngineProcess) -> dict:
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


# A sink that prints "ready", then the byte count and SHA-256 of what one
# connection brought; a source that sends argv[2] seeded random bytes to
# argv[1] (retrying the connection for 10 s) and prints the same.
TCP_SINK = """
import hashlib, socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5001))
s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
h, n = hashlib.sha256(), 0
while True:
    b = c.recv(1 << 16)
    if not b:
        break
    h.update(b)
    n += len(b)
print(n, h.hexdigest(), flush=True)
"""

TCP_SOURCE = """
import hashlib, random, socket, sys, time
data = random.Random(4).randbytes(int(sys.argv[2]))
deadline = time.monotonic() + 10
while True:
    try:
        s = socket.create_connection((sys.argv[1], 5001), timeout=30)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
s.sendall(data)
s.close()
print(len(data), hashlib.sha256(data).hexdigest(), flush=True)
"""


def tcp_transfer(lab: Lab, src_ns: str, dst_ns: str, addr: str, size: int,
                 timeout: float = 300) -> None:
    """``size`` bytes over TCP from ``src_ns`` to ``addr`` in ``dst_ns``; the
    count and SHA-256 both ends print must match."""
    sink = lab.spawn(dst_ns, sys.executable, "-c", TCP_SINK, stdout=subprocess.PIPE, text=True)
    assert sink.stdout.readline().strip() == "ready"
    sent = lab.ns_sh(src_ns, sys.executable, "-c", TCP_SOURCE, addr, str(size),
                     timeout=timeout).stdout.split()
    got, _ = sink.communicate(timeout=60)
    assert got.split() == sent and int(sent[0]) == size
