"""End-to-end: engines on the kernel path beside a plain-only peer that
verifies every checksum (root, namespaces ``ktp-*``).

Hosts a and b run our engine with the kernel path (loading it required),
host p runs the plain-only test peer of fastpath_peer.py: a TAP and the
UDP port, as a legacy host, checking the IPv4, TCP and UDP checksums and
the size of every frame it receives and counting any id-5 message.  All
three carry vnet 78 on a bridge with one domain each.  Domain da talks to
db (the kernel path between our engines) and, both ways, to dp: what a
kernel-path engine sends toward a host that is not one of ours must be
complete, since that host writes it to a TAP without offloads.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
from e2e_helpers import counter, kernel_frames, no_loss_after_first, ping, tcp_transfer
from e2e_helpers import vnet_paths
from netns import KERNEL, REPO, Lab, wait_for

pytestmark = pytest.mark.root

HELPER = os.path.join(REPO, "tests", "fastpath_peer.py")
VNET, V78 = "78", "0000:0000:0000:0000:0000:0000:0000:0078"
ENGINES = {"a": "192.0.2.1", "b": "192.0.2.2"}
PEER = "192.0.2.9"
DOMAINS = {"da": ("a", "10.78.0.1"), "db": ("b", "10.78.0.2"), "dp": ("p", "10.78.0.9")}


class World:
    def __init__(self, lab: Lab):
        self.lab = lab
        self.ns: dict[str, str] = {}
        self.vnetd = {}
        lab.underlay()
        for name, addr in ENGINES.items():
            conf = os.path.join(lab.tmp, f"{name}.conf")
            with open(conf, "w") as f:
                f.write(f"(vnet.add (id {VNET}))\n")
            ns = self.ns[name] = lab.host(name, addr)
            self.vnetd[name] = lab.start_vnetd(ns, "--no-default-vnets", "-f", conf)
            lab.bridge(ns, "vnet78", "vnif0078")
        ns = self.ns["p"] = lab.host("p", PEER)
        lab.ns_sh(ns, "ip", "tuntap", "add", "ptap", "mode", "tap")
        lab.bridge(ns, "vnet78", "ptap")
        self.report = os.path.join(lab.tmp, "peer.json")
        self.peer = lab.spawn(ns, sys.executable, HELPER, "peer", "--tap", "ptap",
                              "--report", self.report, "--vnet", VNET)
        for name, (host, addr) in DOMAINS.items():
            self.ns[name] = lab.domain(name, self.ns[host], "vnet78", addr)

    def peer_report(self) -> dict:
        self.peer.terminate()
        self.peer.wait(10)
        with open(self.report) as f:
            return json.load(f)


@pytest.fixture(scope="module")
def world():
    lab = Lab("ktp-", data_path=KERNEL)
    try:
        w = World(lab)
        for dst in ("db", "dp"):
            wait_for(lambda d=dst: ping(lab, w.ns["da"], DOMAINS[d][1], count=1)[0] == 0,
                     timeout=20, what=f"da to reach {dst}")
        yield w
    finally:
        lab.close()


def test_our_engines_carry_the_vnet_on_the_kernel_path(world):
    for host in ENGINES:
        assert vnet_paths(world.vnetd[host])[V78] == "kernel", host


def test_ping_all_ways(world):
    for src, dst in (("da", "db"), ("db", "da"), ("da", "dp"), ("dp", "da"), ("db", "dp")):
        _rc, seqs, out = ping(world.lab, world.ns[src], DOMAINS[dst][1], count=5,
                              interval=0.1)
        assert no_loss_after_first(seqs, 5), (src, dst, out)


def test_tcp_between_our_engines_and_both_ways_with_the_plain_peer(world):
    a = world.vnetd["a"]
    kernel0, engine0 = kernel_frames(a, VNET), counter(a, V78, "tx_packets")
    tcp_transfer(world.lab, world.ns["da"], world.ns["db"], "10.78.0.2", 20_000_000)
    # Between our engines the kernel carries it all, super-frames whole (at
    # most 64 KiB each): none of it passed through a's engine.
    assert kernel_frames(a, VNET) - kernel0 > 20_000_000 // 65536
    assert counter(a, V78, "tx_packets") - engine0 <= 1       # an ARP refresh at most
    tcp_transfer(world.lab, world.ns["da"], world.ns["dp"], "10.78.0.9", 4_000_000)
    tcp_transfer(world.lab, world.ns["dp"], world.ns["da"], "10.78.0.1", 4_000_000)
    for size in (0, 56, 1000, 1472):
        rc, seqs, out = ping(world.lab, world.ns["da"], "10.78.0.9", count=2, size=size)
        assert rc == 0 and seqs == [1, 2], (size, out)


def test_the_plain_peer_saw_only_plain_frames_with_complete_checksums(world):
    report = world.peer_report()
    assert report["fast_messages"] == 0
    assert report["bad_count"] == 0, report["bad"]
    assert report["tcp_or_udp"] > 2000, report      # the transfers to and from dp
