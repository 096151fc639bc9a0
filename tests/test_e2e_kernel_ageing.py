"""End to end (root): ageing on the kernel path through use stamps
(docs/kernel-path.md 3, design.md 1.1).

Two hosts run vnetd with the kernel path and a 10-s VARP TTL for vnet 97:

    h1 192.0.2.1   d1 10.0.0.1, d3 10.0.0.3 (a bystander on the same bridge)
    h2 192.0.2.2   d2 10.0.0.2

d1 and d2 know each other's MAC (permanent neighbour entries), so nothing
they send goes through user space: only the programs see their frames,
and only the use stamps they write keep the entries alive.  An entry in
use must stay in the engine's tables, in the maps and on the kernel port
for many TTLs (so the bridge never floods d1's frames to d2 to the
bystander); once nothing is sent it must age out.  Namespaces are named
ki*; the tests run in file order and share the world.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from e2e_helpers import ping, varp_entries, vnet_stats
from netns import Lab, is_root, wait_for

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not is_root(), reason="needs root and /dev/net/tun")]

V97 = "0000:0000:0000:0000:0000:0000:0000:0097"
TTL = 10
HOSTS = {"h1": "192.0.2.1", "h2": "192.0.2.2"}
DOMAINS = {  # name: (host, address, MAC)
    "d1": ("h1", "10.0.0.1", "aa:00:00:00:00:01"),
    "d2": ("h2", "10.0.0.2", "aa:00:00:00:00:02"),
    "d3": ("h1", "10.0.0.3", "aa:00:00:00:00:03"),
}
PORT = "vkp0097"


class World:
    def __init__(self, lab: Lab):
        self.lab = lab
        self.ns: dict[str, str] = {}
        self.vnetd = {}
        self.last_use = 0.0
        lab.underlay()
        conf = os.path.join(lab.tmp, "vnets.conf")
        with open(conf, "w") as f:
            f.write("(vnet.add (id 97))\n")
        os.environ["XEND_VNET_REQUIRE_KERNEL_PATH"] = "1"
        try:
            for name, addr in HOSTS.items():
                ns = self.ns[name] = lab.host(name, addr)
                self.vnetd[name] = lab.start_vnetd(ns, "--no-default-vnets", "--varp-ttl",
                                                   str(TTL), "-f", conf)
                lab.bridge(ns, "vnet97", "vnif0097")
        finally:
            del os.environ["XEND_VNET_REQUIRE_KERNEL_PATH"]
        for name, (host, addr, mac) in DOMAINS.items():
            self.ns[name] = lab.domain(name, self.ns[host], "vnet97", addr, mac=mac)

    def fdb(self, host: str, domain: str) -> list[str]:
        """The ports host's bridge has an entry for ``domain``'s MAC on."""
        mac = DOMAINS[domain][2]
        out = self.lab.ns_sh(self.ns[host], "bridge", "fdb", "show", "br", "vnet97").stdout
        return [ln.split()[2] for ln in out.splitlines() if ln.startswith(mac + " ")]

    def engine(self, host: str) -> dict:
        return vnet_stats(self.vnetd[host])["engine"]


@pytest.fixture(scope="module")
def world():
    from xend_vnet.kernel_shim.datapath.kernel.build import compile_object, object_path
    if not os.path.exists(object_path()):
        ok, why = compile_object()
        assert ok, f"the kernel path's object cannot be built: {why}"
    lab = Lab("ki")
    try:
        yield World(lab)
    finally:
        lab.close()


def test_an_entry_in_use_stays_on_the_kernel_port_for_many_ttls(world):
    lab = world.lab
    for d in world.vnetd.values():
        wait_for(lambda d=d: d.status()["group-joined"] == "yes", timeout=10,
                 what="vnetd to join its group")
    # first contact: ARP through the flood, the MACs learned
    wait_for(lambda: ping(lab, world.ns["d1"], "10.0.0.2", count=1)[0] == 0, timeout=20,
             what="d1 to reach d2")
    for here, there in (("d1", "d2"), ("d2", "d1")):
        lab.ns_sh(world.ns[here], "ip", "neigh", "replace", DOMAINS[there][1], "lladdr",
                  DOMAINS[there][2], "dev", "eth0", "nud", "permanent")
    wait_for(lambda: world.fdb("h1", "d2") == [PORT] and world.fdb("h2", "d1") == [PORT],
             timeout=15, what="the remote MACs on the kernel ports")
    used = {h: int(world.engine(h)["kernel_used"]) for h in HOSTS}
    bystander = lab.spawn(world.ns["d3"], "tcpdump", "-l", "-n", "-i", "eth0", "ether", "dst",
                          DOMAINS["d2"][2], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
    time.sleep(1.0)
    pinger = lab.spawn(world.ns["d1"], "ping", "-n", "-q", "-c", "350", "-i", "0.1", "-W", "1",
                       "10.0.0.2", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True)
    elsewhere = []
    try:
        while pinger.poll() is None:            # 35 s: three and a half TTLs
            for host, domain in (("h1", "d2"), ("h2", "d1")):
                ports = world.fdb(host, domain)
                if ports != [PORT]:
                    elsewhere.append((round(time.monotonic(), 1), host, domain, ports))
            time.sleep(0.5)
        out, _ = pinger.communicate(timeout=10)
        world.last_use = time.monotonic()
    finally:
        if pinger.poll() is None:
            pinger.kill()
        time.sleep(0.5)
        bystander.send_signal(signal.SIGINT)
        flooded, _ = bystander.communicate(timeout=10)
    assert elsewhere == []
    assert "350 packets transmitted, 350 received" in out, out
    assert flooded.strip() == "", flooded        # d1's frames to d2 never flooded
    assert DOMAINS["d2"][2] in varp_entries(world.vnetd["h1"])
    assert DOMAINS["d1"][2] in varp_entries(world.vnetd["h2"])
    for h in HOSTS:           # kept by the stamps: 3 TTLs, one reading at least per TTL
        assert int(world.engine(h)["kernel_used"]) - used[h] >= 3, world.engine(h)


def test_an_entry_nobody_uses_ages_out_and_leaves_the_port(world):
    """Nothing sent: the stamps stop moving, the entries age as in user
    space (TTL to a TTL and a sweep after the refresh that noticed the last
    use), and their fdb entries leave the kernel ports."""
    wait_for(lambda: DOMAINS["d2"][2] not in varp_entries(world.vnetd["h1"])
             and DOMAINS["d1"][2] not in varp_entries(world.vnetd["h2"]),
             timeout=4 * TTL, interval=0.5, what="the entries to age out")
    # not before a TTL after the last refresh that saw them used (one a
    # refresh interval, 5 s, before the last frame at the earliest)
    assert time.monotonic() - world.last_use > TTL - 5 - 1
    assert world.fdb("h1", "d2") == [] and world.fdb("h2", "d1") == []
    # learned again from the first frames, through user space and the kernel's reports
    rc, seqs, out = ping(world.lab, world.ns["d1"], "10.0.0.2", count=3)
    assert rc == 0 and seqs == [1, 2, 3], out
    wait_for(lambda: world.fdb("h1", "d2") == [PORT], timeout=10,
             what="d2's MAC on h1's kernel port again")
