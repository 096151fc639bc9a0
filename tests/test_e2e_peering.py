"""End-to-end: vnets across subnets through peer forwarding (protocol.md 7).

Two LANs (bridges in their own namespaces) joined by a router namespace that
routes unicast but not multicast: subnet 1 (192.0.2.0/24) holds hosts a, b
and a2, subnet 2 (198.51.100.0/24) holds c and e.  Every host runs vnetd
with vnet 97 and has a domain on it.  ``rp_filter`` is set to 1 (strict) on
every host: the re-multicast keeps the original sender's address, and
strict filtering accepts it because the route back to that sender leaves
by the interface it arrived on.  The tests run in file order and share the
world; each says what it relies on.  They run twice (tests/conftest.py's
``data_path``): with the engines on the kernel path, and with
``--no-kernel-path``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from e2e_helpers import drops, ping, tcp_transfer, varp_entries, vnet_stats
from netns import REPO, Lab, call_in_netns, is_root, wait_for

from xend_vnet.kernel_shim.wire import codec

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not is_root(), reason="needs root and /dev/net/tun")]

PREFIX = "xv4-"
V97 = "0000:0000:0000:0000:0000:0000:0000:0097"
GROUP = "224.10.0.1"
ROUTER = {"lan1": "192.0.2.254", "lan2": "198.51.100.254"}
HOSTS = {  # name: (LAN, address)
    "a": ("lan1", "192.0.2.1"),
    "b": ("lan1", "192.0.2.2"),
    "a2": ("lan1", "192.0.2.12"),
    "c": ("lan2", "198.51.100.3"),
    "e": ("lan2", "198.51.100.5"),
}
DOMAINS = {  # name: (host, address, MAC)
    "da": ("a", "10.97.0.1", "aa:00:00:00:97:01"),
    "db": ("b", "10.97.0.2", "aa:00:00:00:97:02"),
    "da2": ("a2", "10.97.0.12", "aa:00:00:00:97:12"),
    "dc": ("c", "10.97.0.3", "aa:00:00:00:97:03"),
    "de": ("e", "10.97.0.5", "aa:00:00:00:97:05"),
}
MAC_X = "aa:00:00:00:97:77"

# Counts UDP datagrams on port 9999 that start with the marker, for a while.
LISTENER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 9999))
s.settimeout(0.1)
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[2])
n = 0
while time.monotonic() < end:
    try:
        data = s.recv(2048)
    except socket.timeout:
        continue
    n += data.startswith(sys.argv[1].encode())
print(n, flush=True)
"""


class World:
    def __init__(self, lab: Lab):
        self.lab = lab
        self.ns: dict[str, str] = {}
        self.vnetd = {}
        self.files: dict[str, str] = {}
        self.etc_dirs: list[str] = []
        # A unicast router: no multicast routing daemon, so the group stays on its LAN.
        self.ns["r"], hosts = lab.routed_hosts(ROUTER, HOSTS)
        self.ns.update(hosts)
        for name, ns in hosts.items():
            for conf in ("all", "default", "eth0"):
                lab.ns_sh(ns, "sysctl", "-qw", f"net.ipv4.conf.{conf}.rp_filter=1")
            path = self.files[name] = os.path.join(lab.tmp, f"{name}.conf")
            with open(path, "w") as f:
                f.write("(vnet.add (id 97))\n")
            self.vnetd[name] = lab.start_vnetd(ns, "--no-default-vnets", "-f", path)
            lab.bridge(ns, "vnet97", "vnif0097")
        for name, (host, addr, mac) in DOMAINS.items():
            self.ns[name] = lab.domain(name, self.ns[host], "vnet97", addr, mac=mac)
        # `ip netns exec` mounts /etc/netns/<ns>/hosts over /etc/hosts: a name for c on a.
        etc = os.path.join("/etc/netns", self.ns["a"])
        os.makedirs(etc, exist_ok=True)
        self.etc_dirs.append(etc)
        with open(os.path.join(etc, "hosts"), "w") as f:
            f.write("127.0.0.1 localhost\n198.51.100.3 hostc.example\n")

    def vn(self, host: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        d = self.vnetd[host]
        p = self.lab.ns_sh(self.ns[host], "env", f"PYTHONPATH={REPO}", sys.executable, "-m",
                           "xend_vnet.vn.main", "--control", d.control, *args,
                           check=False)
        if check:
            assert p.returncode == 0, p.stdout + p.stderr
        return p

    def peers(self, host: str) -> dict:
        out = {}
        for form in self.vnetd[host].call(["peer.list"]):
            fields = {c[0]: c[1] for c in form[1:] if isinstance(c, list) and len(c) == 2}
            out[fields["addr"]] = {k: int(v) for k, v in fields.items() if k != "addr"}
        return out

    def flush_caches(self) -> None:
        for name in DOMAINS:
            self.lab.ns_sh(self.ns[name], "ip", "neigh", "flush", "all")
        for name in HOSTS:
            self.vn(name, "varp-flush")

    def listen(self, domains, marker: str, seconds: float) -> dict:
        procs = {}
        for name in domains:
            procs[name] = self.lab.spawn(self.ns[name], sys.executable, "-c", LISTENER,
                                         marker, str(seconds), stdout=subprocess.PIPE,
                                         text=True)
        for p in procs.values():
            assert p.stdout.readline().strip() == "ready"
        return procs

    def broadcast(self, domain: str, marker: str, count: int) -> None:
        call_in_netns(self.ns[domain], _send_broadcasts, marker, count)


def _send_broadcasts(marker: str, count: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    for i in range(count):
        s.sendto(f"{marker}-{i}".encode(), ("10.97.0.255", 9999))
        time.sleep(0.2)
    s.close()


def _results(procs: dict) -> dict:
    out = {}
    for name, p in procs.items():
        stdout, _ = p.communicate(timeout=30)
        out[name] = int(stdout.strip())
    return out


@pytest.fixture(scope="module")
def world(data_path):
    lab = Lab(PREFIX, data_path)
    w = None
    try:
        w = World(lab)
        yield w
    finally:
        lab.close()
        for d in (w.etc_dirs if w else []):
            shutil.rmtree(d, ignore_errors=True)


def test_engines_up_and_raw_sockets_open(world):
    for name, d in world.vnetd.items():
        wait_for(lambda d=d: d.status()["group-joined"] == "yes", what=f"{name} to join")
        status = d.status()
        assert status["address"] == HOSTS[name][1]
        assert (status["remulticast"], status["etherip-receive"]) == ("yes", "yes")


def test_before_peering_c_is_unreachable(world):
    rc, seqs, out = ping(world.lab, world.ns["dc"], "10.97.0.2", count=3, interval=0.3,
                         deadline=3)
    assert rc != 0 and seqs == [], out


def test_peer_add_with_vn_on_a_and_c_only(world):
    world.vn("a", "peer-add", "hostc.example")          # a host name, resolved by vn
    world.vn("c", "peer-add", "192.0.2.1")
    assert world.peers("a") == {"198.51.100.3": {"port": 1798, "tx_packets": 0,
                                                 "rx_packets": 0}}
    listing = world.vn("a", "peers").stdout
    assert "(addr 198.51.100.3)" in listing and "(port 1798)" in listing, listing


def test_c_pings_b_through_the_remulticast_of_a(world):
    world.flush_caches()
    a, b, c = world.vnetd["a"], world.vnetd["b"], world.vnetd["c"]
    resent = int(vnet_stats(a)["engine"]["vfwd_resent"])
    rc, seqs, out = ping(world.lab, world.ns["dc"], "10.97.0.2", count=5, interval=0.2)
    assert rc == 0 and seqs, out
    # dc's ARP request reached b only as a's re-multicast, so b learned dc at c.
    assert int(vnet_stats(a)["engine"]["vfwd_resent"]) > resent
    assert varp_entries(b)[DOMAINS["dc"][2]]["addr"] == "198.51.100.3"
    listing = world.vn("b", "varp").stdout
    block = listing[listing.index(f"(vmac {DOMAINS['dc'][2]})") - 200:]
    assert "(addr 198.51.100.3)" in block, listing
    # rx and tx per peer, both ends.
    assert world.peers("a")["198.51.100.3"]["rx_packets"] > 0
    assert world.peers("c")["192.0.2.1"]["tx_packets"] > 0
    assert "vfwd_not_peer" not in drops(a) and "vfwd_not_peer" not in drops(c)


def test_tcp_20mb_a_to_c_intact(world):
    tcp_transfer(world.lab, world.ns["da"], world.ns["dc"], "10.97.0.3", 20 * 1024 * 1024)


def _udp_from(ns: str, payloads: list, dst: str) -> None:
    def send():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for p in payloads:
            s.sendto(p, (dst, 1798))
        s.close()
    call_in_netns(ns, send)


def test_bad_vfwd_dropped_and_counted(world):
    a = world.vnetd["a"]
    before = drops(a)
    inner = codec.inner_udp_packet(codec.DATA_PREFIX + bytes(15) + b"\x97"
                                   + b"\xff" * 6 + bytes.fromhex("aa0000009788")
                                   + b"\x88\xb5" + bytes(46), GROUP,
                                   src="198.51.100.3")
    not_udp = bytearray(inner)
    not_udp[9] = 6
    nested = codec.inner_udp_packet(codec.encode_vfwd(inner), GROUP, src="198.51.100.3")
    # From b, not a peer of a; then from c, a peer, malformed.
    _udp_from(world.ns["b"], [codec.encode_vfwd(inner)], "192.0.2.1")
    _udp_from(world.ns["c"], [codec.encode_vfwd(inner[:20]), codec.encode_vfwd(bytes(not_udp)),
                              codec.encode_vfwd(nested)], "192.0.2.1")
    want = {"vfwd_not_peer": 1, "vfwd_truncated": 1, "vfwd_not_udp": 1, "vfwd_nested": 1}

    def grown():
        now = drops(a)
        return all(now.get(k, 0) - before.get(k, 0) == n for k, n in want.items())
    wait_for(grown, what="the bad VFWD drops")
    assert a.alive()


def _send_etherip(payloads: list, dst: str) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 97)
    for p in payloads:
        s.sendto(p, (dst, 0))
    s.close()


def test_etherip_proto_97_received(world):
    a = world.vnetd["a"]
    stats = vnet_stats(a)
    rx_etherip, rx = int(stats["engine"]["rx_etherip"]), int(stats[V97]["rx_packets"])
    frame = b"\xff" * 6 + bytes.fromhex(MAC_X.replace(":", "")) + b"\x88\xb5" + bytes(46)
    vid = bytes(15) + b"\x97"
    packets = [b"\x00\x40" + vid + frame, b"\xab\x4c" + vid + frame]   # reserved bits: garbage
    call_in_netns(world.ns["b"], _send_etherip, packets[:1], "192.0.2.1")
    call_in_netns(world.ns["b"], _send_etherip, packets[1:], GROUP)

    def arrived():
        s = vnet_stats(a)
        return (int(s["engine"]["rx_etherip"]) - rx_etherip,
                int(s[V97]["rx_packets"]) - rx) == (2, 2)
    wait_for(arrived, what="two proto-97 frames delivered")
    assert varp_entries(a)[MAC_X]["addr"] == "192.0.2.2"


def test_peer_delete_stops_floods_reaching_c(world):
    world.vn("a", "peer-delete", "198.51.100.3")
    assert world.peers("a") == {}
    rx_c = world.peers("c")["192.0.2.1"]["rx_packets"]
    procs = world.listen(["db", "dc"], "gone", 3)
    world.broadcast("da", "gone", 5)
    assert _results(procs) == {"db": 5, "dc": 0}
    assert world.peers("c")["192.0.2.1"]["rx_packets"] == rx_c


def test_two_forwarders_on_a_subnet_no_storm(world):
    """a peers with c, a2 with e, and c with e: without duplicate suppression
    every broadcast would circle a -> c -> (lan2) -> e -> a2 -> (lan1) -> a for ever."""
    world.vn("a", "peer-add", "198.51.100.3")
    world.vn("a2", "peer-add", "198.51.100.5")
    world.vn("c", "peer-add", "198.51.100.5")
    # e's peers come from its startup file, re-read on SIGHUP.
    with open(world.files["e"], "a") as f:
        f.write("(peer.add (addr 192.0.2.12))\n(peer.add (addr 198.51.100.3))\n")
    world.vnetd["e"].proc.send_signal(signal.SIGHUP)
    wait_for(lambda: set(world.peers("e")) == {"192.0.2.12", "198.51.100.3"},
             what="e's peers from its startup file")
    others = ["db", "da2", "dc", "de"]
    procs = world.listen(others, "loop", 4)
    world.broadcast("da", "loop", 5)
    assert _results(procs) == dict.fromkeys(others, 5)
    duplicates = sum(int(vnet_stats(d)["engine"]["vfwd_duplicates"])
                     for d in world.vnetd.values())
    assert duplicates > 0
    forwarders = ["a", "a2", "c", "e"]
    start = {h: world.peers(h) for h in forwarders}
    time.sleep(10)
    for h in forwarders:
        for addr, p in world.peers(h).items():
            assert p["tx_packets"] - start[h][addr]["tx_packets"] <= 20, (h, addr, p)
    for d in world.vnetd.values():
        assert d.alive()
        io = {k: v for k, v in d.status()["io-dropped"]}
        assert "engine_error" not in io and not any(k.startswith("raw_") for k in io), io
