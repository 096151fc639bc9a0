"""End-to-end: the fast data path delivers what the plain path does.

Hosts a and b run vnetd with offloads (the default), host c runs it with
``--no-offload`` (the legacy-compatible framing; its TAP keeps offloads and
it coalesces received segments), host n with ``--no-tap-offload`` (one frame
per TAP read and write), and host p runs the plain-only test peer of
fastpath_peer.py (a TAP and the UDP port, as a legacy host would).  All five
carry vnet 77 on a bridge with one domain each.  Domain da, on a, talks to
the four others: to db the frames cross as fast segments, to dc, dn and dp
as plain frames, segmented and checksummed in software by a's engine; p
checks every frame it gets.  Hosts a and b
also carry the secured vnet 7b (conf), with domains sa and sb, whose
super-frames cross sealed once each.  Every engine runs with
``--no-kernel-path`` (``Lab(prefix, USER)``): this is the user-space path's
framing, which the kernel path would otherwise carry (design.md 1.1;
tests/test_e2e_kernel_path.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import struct
import subprocess
import sys
import time

import pytest
from e2e_helpers import ping
from netns import REPO, USER, Lab, call_in_netns, is_root, wait_for

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not is_root(), reason="needs root and /dev/net/tun")]

HELPER = os.path.join(REPO, "tests", "fastpath_peer.py")
ENGINES = {"a": ("192.0.2.1", []), "b": ("192.0.2.2", []), "c": ("192.0.2.3", ["--no-offload"]),
           "n": ("192.0.2.4", ["--no-tap-offload"])}
PEER_ADDR = "192.0.2.9"
DOMAINS = {"da": ("a", "10.77.0.1", "aa:00:00:00:77:01"),
           "db": ("b", "10.77.0.2", "aa:00:00:00:77:02"),
           "dc": ("c", "10.77.0.3", "aa:00:00:00:77:03"),
           "dp": ("p", "10.77.0.9", "aa:00:00:00:77:09"),
           "dn": ("n", "10.77.0.4", "aa:00:00:00:77:04"),
           "sa": ("a", "10.123.0.1", "aa:00:00:00:7b:01"),
           "sb": ("b", "10.123.0.2", "aa:00:00:00:7b:02")}


class World:
    def __init__(self, lab: Lab):
        self.lab = lab
        self.ns = {}
        self.vnetd = {}
        lab.underlay()
        key = os.path.join(lab.tmp, "7b.key")
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, os.urandom(32).hex().encode() + b"\n")
        os.close(fd)
        for name, (addr, args) in ENGINES.items():
            conf = os.path.join(lab.tmp, f"{name}.conf")
            with open(conf, "w") as f:
                f.write("(vnet.add (id 77))\n")
                if name in ("a", "b"):
                    f.write(f"(vnet.add (id 7b) (security conf) (key-file {key}))\n")
            ns = self.ns[name] = lab.host(name, addr)
            self.vnetd[name] = lab.start_vnetd(ns, "--no-default-vnets", "-f", conf, *args)
            lab.bridge(ns, "vnet77", "vnif0077")
            if name in ("a", "b"):
                lab.bridge(ns, "vnet7b", "vnif007b")
        ns = self.ns["p"] = lab.host("p", PEER_ADDR)
        lab.ns_sh(ns, "ip", "tuntap", "add", "ptap", "mode", "tap")
        lab.bridge(ns, "vnet77", "ptap")
        self.report = os.path.join(lab.tmp, "peer.json")
        self.peer = lab.spawn(ns, sys.executable, HELPER, "peer", "--tap", "ptap",
                              "--report", self.report, "--vnet", "77")
        for name, (host, addr, mac) in DOMAINS.items():
            bridge = "vnet7b" if name.startswith("s") else "vnet77"
            self.ns[name] = lab.domain(name, self.ns[host], bridge, addr, mac=mac)

    def peer_report(self) -> dict:
        self.peer.terminate()
        self.peer.wait(10)
        with open(self.report) as f:
            return json.load(f)

    def stats(self, host: str) -> dict:
        out = {}
        for form in self.vnetd[host].call(["vnet.stats"]):
            if form[0] == "engine_stats":
                out = {c[0]: (c[1] if len(c) == 2 else c[1:]) for c in form[1:]}
        return out

    def status(self, host: str) -> dict:
        return {c[0]: c[1:] for c in self.vnetd[host].call(["engine.status"])[0][1:]}


@pytest.fixture(scope="module")
def world():
    lab = Lab("xv7-", USER)
    try:
        w = World(lab)
        for src, d in (("da", "db"), ("da", "dc"), ("da", "dp"), ("da", "dn"), ("sa", "sb")):
            wait_for(lambda s=src, d=d: ping(lab, w.ns[s], DOMAINS[d][1], count=1)[0] == 0,
                     timeout=20, what=f"da to reach {d}")
        yield w
    finally:
        lab.close()


def _send(addr: str, size: int, seed: int) -> str:
    rng = random.Random(seed)
    h = hashlib.sha256()
    with socket.create_connection((addr, 5001), timeout=20) as s:
        left = size
        while left:
            n = min(left, rng.choice((1, 100, 1448, 9000, 65536)))
            chunk = rng.randbytes(n)
            h.update(chunk)
            s.sendall(chunk)
            left -= n
    return h.hexdigest()


SERVER = """
import hashlib, socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5001)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); c.settimeout(30); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(1 << 20)
    if not b:
        break
    h.update(b); n += len(b)
print(n, h.hexdigest(), flush=True)
"""


def transfer(world: World, dst: str, size: int, seed: int, src: str = "da") -> None:
    """``size`` bytes from ``src`` to ``dst`` over TCP; the digests must match."""
    server = world.lab.spawn(world.ns[dst], sys.executable, "-c", SERVER,
                             stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "ready"
    sent = call_in_netns(world.ns[src], _send, DOMAINS[dst][1], size, seed, timeout=120)
    assert server.stdout.readline().split() == [str(size), sent]
    server.wait(10)


def test_tcp_transfers_are_byte_exact_on_fast_and_plain_paths(world):
    before = world.stats("a")
    transfer(world, "db", 30_000_000, 1)        # fast segments
    after_fast = world.stats("a")
    assert int(after_fast["tx_fast"]) > int(before["tx_fast"])
    assert int(world.stats("b")["rx_fast_frames"]) > 0
    transfer(world, "dc", 4_000_000, 2)         # plain, to an engine with --no-offload
    transfer(world, "dp", 2_000_000, 3)         # plain, to the plain-only test peer
    assert world.stats("a")["tx_fast"] == after_fast["tx_fast"]
    assert world.status("a")["fast-peers"] == ["192.0.2.2"]
    assert world.status("c")["offload"] == ["no"]
    assert world.status("c")["fast-peers"] == []
    assert int(world.stats("c")["rx_fast"]) == 0


def test_plain_frames_between_engines_are_coalesced_before_the_tap(world):
    """Legacy framing (one frame per datagram) between our engines: the
    receiver merges runs of TCP segments into super-frames for its TAP
    (coalesce.py), both ways, byte-exact; an engine with --no-tap-offload
    writes them one by one."""
    def coalesced(host: str) -> int:
        return int(world.status(host)["coalesced"][0])
    a0, c0 = coalesced("a"), coalesced("c")
    transfer(world, "dc", 8_000_000, 5)              # a to c
    transfer(world, "da", 8_000_000, 6, src="dc")    # c to a, plain: c sends no segments
    transfer(world, "dn", 4_000_000, 7)              # a to n, frame by frame
    transfer(world, "da", 4_000_000, 8, src="dn")
    assert coalesced("c") > c0
    assert coalesced("a") > a0
    assert world.status("c")["tap-offload"] == ["yes"]
    assert world.status("n")["tap-offload"] == ["no"]
    assert world.status("n")["offload"] == ["no"]
    assert coalesced("n") == 0
    assert int(world.stats("n")["rx_fast"]) == 0


def test_secured_super_frames_are_byte_exact(world):
    before = int(world.stats("a")["tx_fast"])
    transfer(world, "sb", 20_000_000, 4, src="sa")
    assert int(world.stats("a")["tx_fast"]) > before
    assert "bad_icv" not in str(world.vnetd["b"].call(["vnet.stats"]))


def test_mixed_frame_sizes(world):
    for dst in ("db", "dc", "dp", "dn"):
        for size in (0, 56, 1000, 1472, 1473, 4000, 20000):
            out = world.lab.ns_sh(world.ns["da"], "ping", "-c", "2", "-i", "0.2", "-W", "2",
                                  "-s", str(size), DOMAINS[dst][1], check=False).stdout
            assert " 0% packet loss" in out, (dst, size, out)
            assert "wrong data" not in out


def _send_tagged(frames: list) -> None:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind(("eth0", 0))
    for f in frames:
        s.send(bytes.fromhex(f))
        time.sleep(0.002)
    s.close()


def test_vlan_tagged_frames_arrive_unchanged(world):
    src = bytes.fromhex(DOMAINS["da"][2].replace(":", ""))
    rng = random.Random(7)
    for dst in ("db", "dc", "dp"):
        mac = bytes.fromhex(DOMAINS[dst][2].replace(":", ""))
        frames = [(mac + src + struct.pack("!HHH", 0x8100, 100 + i, 0x88B5)
                   + rng.randbytes(size)).hex()
                  for i, size in enumerate((46, 100, 1000, 1496, 1500))]
        cap = world.lab.spawn(world.ns[dst], sys.executable, HELPER, "capture", "--ifname",
                              "eth0", "--seconds", "3", stdout=subprocess.PIPE, text=True)
        assert cap.stdout.readline().strip() == "ready"
        call_in_netns(world.ns["da"], _send_tagged, frames)
        got = json.loads(cap.stdout.readline())
        cap.wait(10)
        assert sorted(got) == sorted(frames), dst


def test_plain_peer_saw_only_plain_frames_with_good_checksums(world):
    report = world.peer_report()
    assert report["fast_messages"] == 0
    assert report["bad_count"] == 0, report["bad"]
    assert report["tcp_or_udp"] > 1000      # the transfer to dp came through it
