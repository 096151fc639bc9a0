"""The kernel port end to end (root): the veth pair each attached vnet gets
on its TAP's bridge (datapath/kernel/port.py), its fdb entries (fdb.py),
GRO at decapsulation, the bridges followed by ``refresh``, and known
unicast that flows on while no engine runs (docs/kernel-path.md 4).

Two hosts on a veth LAN, each running vnetd for vnet 97 (it holds the TAP
and carries what the kernel leaves) and KernelShim driven by
tests/kernel_shim_peer.py (tests/kernel_shim_bed.py draws the bed).
Namespaces are named kqe* (kqr* for the second bed).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest

from e2e_helpers import ping, send_gratuitous_arp, tcp_transfer
from kernel_shim_bed import BRIDGE, TAP, VID, Bed
from netns import call_in_netns, is_root, socket_in_netns, wait_for

pytestmark = pytest.mark.root

SVID = "0000:0000:0000:0000:0000:0000:0000:0097"
P, Q = "vkp0097", "vkq0097"


@pytest.fixture(scope="module")
def bed():
    if not is_root():
        pytest.skip("needs root, network namespaces and /dev/net/tun")
    from xend_vnet.kernel_shim.datapath.kernel.build import compile_object, object_path
    if not os.path.exists(object_path()):
        ok, why = compile_object()
        if not ok:
            pytest.skip(f"no compiled BPF object: {why}")
    b = Bed("kqe", engine=True)
    try:
        pin_underlay_neighbours(b)
        # IPv6 on for devices made from now on in h1: the port must stay silent anyway
        b.lab.ns_sh(b.hosts[0], "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=0")
        b.open_all()
        yield b
    finally:
        b.close()


def pin_underlay_neighbours(b: Bed) -> None:
    """Permanent ARP entries between the hosts: the machine's ARP table is
    shared by every namespace, and when other tests fill it a new entry may
    not be made, which would lose the first frames of a test here."""
    for i, h in enumerate(b.hosts):
        for j, other in enumerate(b.hosts):
            if i != j:
                b.lab.ns_sh(h, "ip", "neigh", "replace", b.addr(j), "lladdr",
                            b.lab.mac(other), "dev", "eth0", "nud", "permanent")


def counters(b: Bed, i: int) -> dict:
    return b.peers[i].call("counters")[SVID]


def kport(b: Bed, i: int) -> dict:
    return b.peers[i].call("kernel_ports")[SVID]


def link_text(b: Bed, ns: str, dev: str) -> str:
    return b.lab.ns_sh(ns, "ip", "-d", "link", "show", dev).stdout


def stat(b: Bed, ns: str, dev: str, name: str) -> int:
    return b.lab.link_stat(ns, dev, name)


def fdb_of(b: Bed, i: int, mac: str, bridge: str = BRIDGE) -> list[str]:
    """The lines of ``bridge fdb show`` of host i's bridge for ``mac``."""
    out = b.lab.ns_sh(b.hosts[i], "bridge", "fdb", "show", "br", bridge).stdout
    return [line.strip() for line in out.splitlines() if line.startswith(mac)]


def on(b: Bed, i: int, mac: str, dev: str, bridge: str = BRIDGE) -> bool:
    return any(f" dev {dev} " in f" {line} " for line in fdb_of(b, i, mac, bridge))


def forwarding(b: Bed, ns: str, dev: str) -> None:
    """Wait until bridge port ``dev`` forwards (a port just added)."""
    wait_for(lambda: "state forwarding" in b.lab.ns_sh(ns, "bridge", "link", "show", "dev",
                                                       dev).stdout
             and "LOWER_UP" in b.lab.ns_sh(ns, "ip", "link", "show", dev).stdout,
             timeout=5, what=f"{dev} forwarding")


def garp(b: Bed, i: int) -> None:
    """Domain i says where it is (a broadcast: through the engines)."""
    call_in_netns(b.domains[i], send_gratuitous_arp, "eth0", b.macs[i], f"10.0.0.{i + 1}")


def move_to_tap(b: Bed, i: int) -> None:
    """Make host i's bridge move domain (1 - i)'s entry to the TAP's port: a
    broadcast from that domain, which the engines carry and host i's writes
    into its TAP (again each second: the engines' floods are not reliable)."""
    def moved():
        if on(b, i, b.macs[1 - i], TAP):
            return True
        garp(b, 1 - i)
        return on(b, i, b.macs[1 - i], TAP)
    wait_for(moved, timeout=10, interval=1.0, what="the entry moved to the TAP's port")


def tcp_in_segs(b: Bed, ns: str) -> int:
    lines = [ln.split() for ln in b.lab.ns_sh(ns, "cat", "/proc/net/snmp").stdout.splitlines()
             if ln.startswith("Tcp:")]
    return int(dict(zip(lines[0][1:], lines[1][1:]))["InSegs"])


def tcp_ext(b: Bed, ns: str, name: str) -> int:
    lines = [ln.split() for ln in b.lab.ns_sh(ns, "cat", "/proc/net/netstat").stdout.splitlines()
             if ln.startswith("TcpExt:")]
    return int(dict(zip(lines[0][1:], lines[1][1:]))[name])


def reopen(b: Bed, i: int) -> dict:
    """What an engine does when it starts: open (adopting), attach, tables."""
    peer = b.peers[i]
    reply = peer.call("open", underlay="eth0", local=b.addr(i), mtu=b.mtu)
    b.taps[i] = peer.call("ifindex", name=TAP)
    peer.call("attach", vid=VID, tap_ifindex=b.taps[i])
    peer.call("set_local", vid=VID, mac=b.macs[i])
    for j, mac in enumerate(b.macs):
        if j != i:
            peer.call("set_remote", vid=VID, mac=mac, addr=b.addr(j), kernel_peer=True)
    return reply


# -- the port ---------------------------------------------------------------------------------

def test_the_port_is_on_the_taps_bridge(bed):
    for i in (0, 1):
        info = kport(bed, i)
        assert (info["p_name"], info["q_name"], info["carries"]) == (P, Q, True)
        h = bed.hosts[i]
        p = link_text(bed, h, P)
        assert f"master {BRIDGE}" in p and "state UP" in p
        for setting in ("learning off", "flood off", "mcast_flood off", "bcast_flood off",
                        "mcast_router 0"):
            assert setting in p, (setting, p)
        assert f"alias xend-vnet vnet {SVID} kernel-port P" in p
        assert "link/ether fe:ff:ff:ff:ff:ff" in p and "mtu 1500" in p
        q = link_text(bed, h, Q)
        assert "master" not in q and "state UP" in q and "mtu 1500" in q
        assert f"alias xend-vnet vnet {SVID} kernel-port Q" in q
        assert "generic-receive-offload: on" in bed.lab.ns_sh(h, "ethtool", "-k", P).stdout
        assert "tx-tcp-segmentation: off" in bed.lab.ns_sh(h, "ethtool", "-k", Q).stdout
    # h1 made the port with IPv6 on: no address, so nothing of its own on the wire
    h1 = bed.hosts[0]
    for dev in (P, Q):
        assert "inet" not in bed.lab.ns_sh(h1, "ip", "addr", "show", "dev", dev).stdout
    time.sleep(2)
    assert stat(bed, h1, Q, "tx_packets") == 0 and stat(bed, h1, P, "tx_packets") == 0


def test_remote_macs_have_static_entries_on_the_port(bed):
    assert on(bed, 0, bed.macs[1], P) and "static" in fdb_of(bed, 0, bed.macs[1])[0]
    assert on(bed, 1, bed.macs[0], P)
    assert not on(bed, 0, bed.macs[0], P)         # the local domain: never on the port


def test_ping_and_tcp_through_the_port(bed):
    before = [counters(bed, 0), counters(bed, 1)]
    q_tx = [stat(bed, bed.hosts[i], Q, "tx_packets") for i in (0, 1)]
    rc, seqs, out = ping(bed.lab, bed.domains[0], "10.0.0.2", count=5)
    assert rc == 0 and seqs == [1, 2, 3, 4, 5], out
    tcp_transfer(bed.lab, bed.domains[0], bed.domains[1], "10.0.0.2", 20_000_000)
    tcp_transfer(bed.lab, bed.domains[1], bed.domains[0], "10.0.0.1", 20_000_000)
    for i in (0, 1):
        after = counters(bed, i)
        delta = {k: after[k] - before[i][k] for k in after}
        assert delta["encapsulated"] > 200 and delta["decapsulated"] > 200, delta
        left = sum(v for k, v in delta.items() if k.startswith("to_user_"))
        assert left < delta["encapsulated"] / 20, delta
        # single segments left by Q (super-frames enter at P directly)
        assert stat(bed, bed.hosts[i], Q, "tx_packets") - q_tx[i] >= 5


def test_gro_for_a_software_segmenting_sender(bed):
    """h1's underlay checksums and segments in software (tx off): h2
    decapsulates single segments, and veth's GRO at P hands the domain
    super-frames, as a NIC's GRO would."""
    h1, d2 = bed.hosts[0], bed.domains[1]
    bed.lab.ns_sh(h1, "ethtool", "-K", "eth0", "tx", "off")
    try:
        cap = bed.lab.spawn(d2, "tcpdump", "-l", "-n", "-i", "eth0", "-c", "5",
                            "tcp and greater 4000", stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
        time.sleep(1.0)
        before, segs = counters(bed, 1)["decapsulated"], tcp_in_segs(bed, d2)
        tcp_transfer(bed.lab, bed.domains[0], d2, "10.0.0.2", 30_000_000)
        decapsulated = counters(bed, 1)["decapsulated"] - before
        received = tcp_in_segs(bed, d2) - segs
        try:
            out, _ = cap.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            cap.kill()
            out, _ = cap.communicate()
        # ~20000 segments of 1396 bytes were decapsulated one by one...
        assert decapsulated > 15_000, decapsulated
        # ...and reached the domain merged
        assert received < decapsulated / 4, (received, decapsulated)
        assert len(re.findall(r"length (\d+)", out)) == 5, out
    finally:
        bed.lab.ns_sh(h1, "ethtool", "-K", "eth0", "tx", "on")


# -- following the bridges ---------------------------------------------------------------------

def test_refresh_follows_the_taps_bridge(bed):
    h1, lab = bed.hosts[0], bed.lab
    peer = bed.peers[0]
    lab.ns_sh(h1, "ip", "link", "set", TAP, "nomaster")
    peer.call("refresh")
    info = kport(bed, 0)
    assert info["bridge"] == 0 and not info["carries"]
    assert "master" not in link_text(bed, h1, P)
    # to another bridge, with the domain (as an operator's brctl would)
    lab.bridge(h1, "vnet97b", TAP)
    lab.enslave(h1, "vif-d1", "vnet97b")
    try:
        peer.call("refresh")
        info = kport(bed, 0)
        assert info["carries"] and "master vnet97b" in link_text(bed, h1, P)
        assert on(bed, 0, bed.macs[1], P, bridge="vnet97b")
        before = counters(bed, 0)["encapsulated"]
        rc, seqs, out = ping(bed.lab, bed.domains[0], "10.0.0.2", count=3)
        assert rc == 0 and seqs == [1, 2, 3], out
        assert counters(bed, 0)["encapsulated"] - before >= 3
    finally:
        lab.enslave(h1, TAP, BRIDGE)
        lab.enslave(h1, "vif-d1", BRIDGE)
        lab.ns_sh(h1, "ip", "link", "del", "vnet97b")
    peer.call("refresh")
    assert f"master {BRIDGE}" in link_text(bed, h1, P) and on(bed, 0, bed.macs[1], P)
    rc, seqs, out = ping(bed.lab, bed.domains[0], "10.0.0.2", count=3)
    assert rc == 0 and seqs == [1, 2, 3], out


def test_refresh_follows_the_mtu_and_remakes_a_deleted_port(bed):
    h1, lab, peer = bed.hosts[0], bed.lab, bed.peers[0]
    lab.ns_sh(h1, "ip", "link", "set", TAP, "mtu", "1400")
    try:
        peer.call("refresh")
        assert "mtu 1400" in link_text(bed, h1, P) and "mtu 1400" in link_text(bed, h1, Q)
    finally:
        lab.ns_sh(h1, "ip", "link", "set", TAP, "mtu", "1500")
    peer.call("refresh")
    assert "mtu 1500" in link_text(bed, h1, P)
    old = kport(bed, 0)["p_index"]
    lab.ns_sh(h1, "ip", "link", "del", P)
    peer.call("refresh")
    info = kport(bed, 0)
    assert info["p_index"] != old and info["carries"]
    assert on(bed, 0, bed.macs[1], P)
    before = counters(bed, 0)["encapsulated"]
    rc, seqs, out = ping(bed.lab, bed.domains[0], "10.0.0.2", count=3)
    assert rc == 0 and seqs == [1, 2, 3], out
    assert counters(bed, 0)["encapsulated"] - before >= 3


def test_an_entry_the_taps_learning_moved_goes_back_to_the_port(bed):
    """d2's broadcast reaches h1 through the engines, which write it into
    h1's TAP: h1's bridge moves d2's entry to the TAP's port (still static);
    the next refresh puts it back on P."""
    move_to_tap(bed, 0)
    bed.peers[0].call("refresh")
    assert on(bed, 0, bed.macs[1], P) and "static" in fdb_of(bed, 0, bed.macs[1])[0]


def test_a_decapsulated_source_never_moves_a_local_entry(bed):
    """P learns nothing: a frame from the network claiming d1's MAC as its
    source leaves d1's entry on its vif."""
    h1 = bed.hosts[0]
    d1 = bytes.fromhex(bed.macs[0].replace(":", ""))
    rc, _seqs, out = ping(bed.lab, bed.domains[0], "10.0.0.2", count=2)   # h1 learns d1
    assert rc == 0, out
    assert on(bed, 0, bed.macs[0], "vif-d1")
    before = counters(bed, 0)["decapsulated"]
    inner = d1 + d1 + b"\x08\x00" + bytes(46)
    payload = b"\x00\x02\x00\x00\x00\x40" + bytes(14) + b"\x00\x97" + inner
    s = socket_in_netns(bed.hosts[1])
    try:
        s.sendto(payload, ("192.0.2.1", 1798))
    finally:
        s.close()
    wait_for(lambda: counters(bed, 0)["decapsulated"] > before, timeout=5,
             what="the forged frame decapsulated")
    assert on(bed, 0, bed.macs[0], "vif-d1") and not on(bed, 0, bed.macs[0], P)
    assert "learning off" in link_text(bed, h1, P)


# -- restarts ------------------------------------------------------------------------------------

def _packets(out: str) -> tuple[int, int]:
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))


def test_known_unicast_flows_while_no_engine_runs(bed):
    """Both hosts' shims close and their vnetds stop (the TAPs lose their
    carrier) under a 100/s ping and a TCP stream; new engines adopt."""
    lab = bed.lab
    ports_before = [kport(bed, i)["p_index"] for i in (0, 1)]
    timeouts = tcp_ext(bed, bed.domains[0], "TCPTimeouts")
    server = lab.spawn(bed.domains[1], "iperf3", "-s", "-1", "-p", "5202",
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    pinger = lab.spawn(bed.domains[0], "ping", "-n", "-q", "-i", "0.01", "-c", "1000", "-W", "1",
                       "10.0.0.2", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stream = lab.spawn(bed.domains[0], "iperf3", "-c", "10.0.0.2", "-p", "5202", "-t", "10",
                       "-b", "50M", "-i", "0.5", "-J", stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL, text=True)
    try:
        time.sleep(1.0)
        # a remote's broadcast moves its entry to h1's TAP port: close() puts it back
        move_to_tap(bed, 0)
        engines = {d.ns: d for d in lab.daemons if d.alive()}
        for i in (0, 1):
            bed.peers[i].call("close")
            engines[bed.hosts[i]].stop()
        for i in (0, 1):
            assert "NO-CARRIER" in lab.ns_sh(bed.hosts[i], "ip", "link", "show", TAP).stdout
            assert on(bed, i, bed.macs[1 - i], P)
        time.sleep(2.5)
        for i in (0, 1):
            d = engines[bed.hosts[i]]
            lab.start_vnetd(d.ns, *d.args)
            assert reopen(bed, i) == {"adopted": True}
        out, _ = pinger.communicate(timeout=30)
        report, _ = stream.communicate(timeout=30)
    finally:
        for proc in (pinger, stream, server):
            if proc.poll() is None:
                proc.kill()
    sent, received = _packets(out)
    assert sent == 1000 and received == sent, out
    result = json.loads(report)
    intervals = [iv["sum"]["bytes"] for iv in result["intervals"]]
    assert len(intervals) >= 15 and all(n > 0 for n in intervals), intervals
    # no stall: data in every half second, and no retransmission timeout (a
    # probe or fast retransmit on this busy machine is no lost connectivity)
    assert tcp_ext(bed, bed.domains[0], "TCPTimeouts") == timeouts, result["end"]["sum_sent"]
    assert [kport(bed, i)["p_index"] for i in (0, 1)] == ports_before
    for i in (0, 1):
        assert bed.peers[i].call("attached") == {SVID: bed.taps[i]}
    rc, seqs, out = ping(lab, bed.domains[0], "10.0.0.2", count=3)
    assert rc == 0 and seqs == [1, 2, 3], out


# -- migration -----------------------------------------------------------------------------------

def test_a_domain_migrating_here_reaches_its_vif(bed):
    """d2 moves from h2 to h1: h1's engine learns it is local (set_local),
    the bridge learns it on its vif; no entry of ours holds it on P."""
    lab, h1, h2 = bed.lab, bed.hosts[0], bed.hosts[1]
    peer = bed.peers[0]
    mac = bed.macs[1]
    assert on(bed, 0, mac, P)
    lab.move_vif("d2", h2, h1, BRIDGE)
    try:
        forwarding(bed, h1, "vif-d2")
        peer.call("set_local", vid=VID, mac=mac)
        assert not on(bed, 0, mac, P)
        rc, seqs, out = ping(lab, bed.domains[0], "10.0.0.2", count=3)
        assert rc == 0 and seqs == [1, 2, 3], out
        assert on(bed, 0, mac, "vif-d2")
        # known there now: delivered here (the first request, flooded while the
        # bridge did not know d2, also went to the TAP)
        before = counters(bed, 0)["encapsulated"]
        rc, seqs, out = ping(lab, bed.domains[0], "10.0.0.2", count=3)
        assert rc == 0 and seqs == [1, 2, 3], out
        assert counters(bed, 0)["encapsulated"] == before
        # the engine's remote table still says h2 (stale): its entry stays on the vif
        peer.call("set_remote", vid=VID, mac=mac, addr=bed.addr(1), kernel_peer=True)
        peer.call("refresh")
        assert on(bed, 0, mac, "vif-d2") and not on(bed, 0, mac, P)
        rc, seqs, out = ping(lab, bed.domains[0], "10.0.0.2", count=3)
        assert rc == 0 and seqs == [1, 2, 3], out
    finally:
        lab.move_vif("d2", h1, h2, BRIDGE)
        peer.call("del_local", vid=VID, mac=mac)
    forwarding(bed, h2, "vif-d2")
    # gone again: its entry (deleted with the vif's port) is ours on P again
    peer.call("refresh")
    assert on(bed, 0, mac, P)
    rc, seqs, out = ping(lab, bed.domains[0], "10.0.0.2", count=3)
    assert rc == 0 and seqs == [1, 2, 3], out


def test_a_static_entry_moves_to_a_learning_port(bed):
    """What the design rests on, on this kernel: our entry is not sticky."""
    lab, h1 = bed.lab, bed.hosts[0]
    lab.ns_sh(h1, "ip", "link", "add", "kq-a", "type", "veth", "peer", "name", "kq-b")
    try:
        lab.enslave(h1, "kq-a", BRIDGE)
        lab.ns_sh(h1, "ip", "link", "set", "kq-b", "up")
        forwarding(bed, h1, "kq-a")
        assert on(bed, 0, bed.macs[1], P)
        call_in_netns(h1, send_gratuitous_arp, "kq-b", bed.macs[1], "10.0.0.2")
        wait_for(lambda: on(bed, 0, bed.macs[1], "kq-a"), timeout=5, what="the move")
        bed.peers[0].call("refresh")
        assert on(bed, 0, bed.macs[1], "kq-a")      # the bridge knows it there: left alone
    finally:
        lab.ns_sh(h1, "ip", "link", "del", "kq-a")
    bed.peers[0].call("refresh")                    # gone with kq-a: ours again
    assert on(bed, 0, bed.macs[1], P)


# -- ownership -----------------------------------------------------------------------------------

def test_attach_refuses_a_name_that_is_not_ours(bed):
    h1, peer = bed.hosts[0], bed.peers[0]
    bed.lab.ns_sh(h1, "ip", "link", "add", "vkp0098", "type", "veth", "peer", "name", "kq-sq")
    try:
        tap = peer.call("tap", name="vnif0098")
        reply = peer.try_call("attach", vid="98", tap_ifindex=tap)
        assert not reply["ok"] and "vkp0098" in reply["unavailable"], reply
        assert peer.call("attached") == {SVID: bed.taps[0]}
        assert "vkp0098" in bed.lab.ns_sh(h1, "ip", "link", "show", "vkp0098").stdout
        assert bed.lab.ns_sh(h1, "ip", "link", "show", "vkq0098", check=False).returncode != 0
    finally:
        bed.lab.ns_sh(h1, "ip", "link", "del", "vkp0098")


def test_detach_removes_the_port_and_our_entries_only(bed):
    lab, h1, peer = bed.lab, bed.hosts[0], bed.peers[0]
    lab.ns_sh(h1, "bridge", "fdb", "add", "02:00:00:00:00:77", "dev", "vif-d1", "master",
              "static")
    lab.ns_sh(h1, "ip", "link", "add", "vkp0099", "type", "veth", "peer", "name", "vkq0099")
    try:
        move_to_tap(bed, 0)         # d2's entry: ours, moved to the TAP's port
        peer.call("detach", vid=VID)
        links = lab.ns_sh(h1, "ip", "-o", "link", "show").stdout
        assert f" {P}@" not in links and f" {Q}@" not in links
        assert "vkp0099@vkq0099" in links and f"{TAP}:" in links
        assert lab.master(h1, TAP) == BRIDGE and lab.master(h1, "vif-d1") == BRIDGE
        assert fdb_of(bed, 0, bed.macs[1]) == []
        assert on(bed, 0, "02:00:00:00:00:77", "vif-d1")
        assert peer.call("kernel_ports") == {}
        rc, seqs, out = ping(lab, bed.domains[0], "10.0.0.2", count=3)   # the engine's path
        assert rc == 0 and seqs == [1, 2, 3], out
    finally:
        lab.ns_sh(h1, "bridge", "fdb", "del", "02:00:00:00:00:77", "dev", "vif-d1", "master")
        lab.ns_sh(h1, "ip", "link", "del", "vkp0099")
    reopen(bed, 0)
    assert kport(bed, 0)["carries"] and on(bed, 0, bed.macs[1], P)


def test_purge_removes_ours_only(bed):
    lab, h1 = bed.lab, bed.hosts[0]
    lab.ns_sh(h1, "ip", "link", "add", "vkp0099", "type", "veth", "peer", "name", "vkq0099")
    try:
        bed.peers[0].call("purge")
        links = lab.ns_sh(h1, "ip", "-o", "link", "show").stdout
        assert f" {P}@" not in links and f" {Q}@" not in links
        assert "vkp0099@vkq0099" in links
        assert fdb_of(bed, 0, bed.macs[1]) == [] or not on(bed, 0, bed.macs[1], P)
        assert "xend-vnet" not in lab.ns_sh(h1, "tc", "filter", "show", "dev", TAP,
                                            "egress").stdout
        assert lab.master(h1, TAP) == BRIDGE
        # h2 keeps its own
        assert kport(bed, 1)["carries"] and f"master {BRIDGE}" in link_text(bed, bed.hosts[1], P)
        rc, seqs, out = ping(lab, bed.domains[0], "10.0.0.2", count=3)   # the engine's path
        assert rc == 0 and seqs == [1, 2, 3], out
    finally:
        lab.ns_sh(h1, "ip", "link", "del", "vkp0099")
