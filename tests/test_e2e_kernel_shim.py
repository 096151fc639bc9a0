"""The kernel data path end to end (root): two hosts on a veth LAN, each
running vnetd for vnet 97 (it carries what the kernel path leaves to user
space) and KernelShim driven by tests/kernel_shim_peer.py, the way the
engine's control plane drives it (tests/kernel_shim_bed.py draws the bed).

Namespaces are named kb*.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import time

import pytest

from e2e_helpers import ping, tcp_transfer
from netns import REPO, is_root
from kernel_shim_bed import VID, Bed

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import legacy_vnetd  # noqa: E402

pytestmark = pytest.mark.root

VID_RAW = bytes(14) + b"\x00\x97"
VECTORS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vectors")


@pytest.fixture(scope="module")
def bed():
    if not is_root():
        pytest.skip("needs root, network namespaces and /dev/net/tun")
    from xend_vnet.kernel_shim.datapath.kernel.build import compile_object, object_path
    if not os.path.exists(object_path()):
        ok, why = compile_object()
        if not ok:
            pytest.skip(f"no compiled BPF object: {why}")
    b = Bed("kb", engine=True)
    try:
        b.open_all()
        yield b
    finally:
        b.close()


def counters(b: Bed, i: int) -> dict:
    return b.peers[i].call("counters")[str_vid()]


def str_vid() -> str:
    return "0000:0000:0000:0000:0000:0000:0000:0097"


def tcp_in_csum_errors(b: Bed, ns: str) -> int:
    lines = [ln.split() for ln in b.lab.ns_sh(ns, "cat", "/proc/net/snmp").stdout.splitlines()
             if ln.startswith("Tcp:")]
    return int(dict(zip(lines[0][1:], lines[1][1:]))["InCsumErrors"])


def test_ping_goes_through_the_kernel(bed):
    before = [counters(bed, 0), counters(bed, 1)]
    rc, seqs, out = ping(bed.lab, bed.domains[0], "10.0.0.2", count=5)
    assert rc == 0 and seqs == [1, 2, 3, 4, 5], out
    after = [counters(bed, 0), counters(bed, 1)]
    for i in (0, 1):
        assert after[i]["encapsulated"] - before[i]["encapsulated"] >= 5
        assert after[i]["decapsulated"] - before[i]["decapsulated"] >= 5


def test_full_size_ping_is_left_to_user_space(bed):
    """1472 bytes of ICMP make a 1500-byte packet, 64 too many for the
    underlay: the engine sends it fragmented, as legacy does."""
    before = [counters(bed, 0), counters(bed, 1)]
    rc, seqs, out = ping(bed.lab, bed.domains[0], "10.0.0.2", count=3, size=1472)
    assert rc == 0 and seqs == [1, 2, 3], out
    after = [counters(bed, 0), counters(bed, 1)]
    assert after[0]["to_user_no_fit"] - before[0]["to_user_no_fit"] == 3
    assert after[1]["to_user_no_fit"] - before[1]["to_user_no_fit"] == 3   # the replies
    rc, seqs, out = ping(bed.lab, bed.domains[0], "10.0.0.2", count=3, size=1372)
    assert rc == 0 and seqs == [1, 2, 3], out
    assert counters(bed, 0)["to_user_no_fit"] == after[0]["to_user_no_fit"]


def test_the_programs_stamp_the_entries_they_use_at_most_once_a_second(bed):
    """docs/kernel-path.md 3: a frame from a MAC whose entry the map holds
    writes the time into it (the decapsulator for a remote, the
    encapsulator for a local domain), at most once a second; the engine
    writes 0 with the entry."""
    h1, h2 = bed.peers
    d1, d2 = bed.macs
    h1.call("set_remote", vid=VID, mac=d2, addr=bed.addr(1), kernel_peer=True)
    assert h1.call("used", vid=VID, mac=d2) == 0
    assert h1.call("used", vid=VID, mac="02:00:00:00:00:99") is None
    pinger = bed.lab.spawn(bed.domains[0], "ping", "-n", "-q", "-i", "0.01", "-c", "300",
                           "10.0.0.2", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen = {"remote": set(), "local": set(), "h2": set()}
    start = time.monotonic()
    try:
        while pinger.poll() is None:
            seen["remote"].add(h1.call("used", vid=VID, mac=d2))
            seen["local"].add(h1.call("used", vid=VID, mac=d1, kind="local"))
            seen["h2"].add(h2.call("used", vid=VID, mac=d1))
            time.sleep(0.05)
    finally:
        if pinger.poll() is None:
            pinger.kill()
    now, took = h1.call("monotonic_ns"), time.monotonic() - start
    for name, stamps in seen.items():
        stamps = sorted(stamps - {0})
        # 3 s (more on a busy machine) of frames every 10 ms: a stamp a second
        assert 2 <= len(stamps) <= took + 2, (name, took, stamps)
        assert all(b - a >= 10**9 for a, b in zip(stamps, stamps[1:])), (name, stamps)
        assert 0 <= now - stamps[-1] < 10 * 10**9, (name, now, stamps)   # the kernel's clock


def _capture_syns(bed: Bed, ns: str, port: int) -> subprocess.Popen:
    cap = bed.lab.spawn(ns, "tcpdump", "-l", "-n", "-v", "-i", "eth0", "-c", "2",
                        f"tcp port {port} and tcp[tcpflags] & tcp-syn != 0",
                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(1.0)
    return cap


def _syn_mss(out: str) -> list[int]:
    return [int(m) for m in re.findall(r"Flags \[S\],.*mss (\d+)", out)]


def test_tcp_both_ways_checksums_and_mss(bed):
    errs = [tcp_in_csum_errors(bed, d) for d in bed.domains]
    before = [counters(bed, 0), counters(bed, 1)]
    cap = _capture_syns(bed, bed.domains[1], 5001)
    tcp_transfer(bed.lab, bed.domains[0], bed.domains[1], "10.0.0.2", 30_000_000)
    out2, _ = cap.communicate(timeout=20)
    cap = _capture_syns(bed, bed.domains[0], 5001)
    tcp_transfer(bed.lab, bed.domains[1], bed.domains[0], "10.0.0.1", 30_000_000)
    out1, _ = cap.communicate(timeout=20)
    after = [counters(bed, 0), counters(bed, 1)]
    assert [tcp_in_csum_errors(bed, d) for d in bed.domains] == errs
    for i in (0, 1):
        # 30 MB went through the kernel both ways (counted in super-frames of
        # up to 64 KB, and acknowledgements); next to nothing through the engine
        delta = {k: after[i][k] - before[i][k] for k in after[i]}
        assert delta["encapsulated"] > 400 and delta["decapsulated"] > 400, delta
        left = sum(v for k, v in delta.items() if k.startswith("to_user_"))
        assert left < delta["encapsulated"] / 20, delta
        assert after[i]["mss_clamped"] > before[i]["mss_clamped"]
    # each SYN (MSS 1460 from a 1500-byte domain) arrives clamped to 1500 - 64 - 40
    assert _syn_mss(out2) == [1396], out2
    assert _syn_mss(out1) == [1396], out1


def test_no_route_stays_in_user_space(bed):
    bed.peers[0].call("del_remote", vid=VID, mac=bed.macs[1])
    try:
        before = counters(bed, 0)
        rc, seqs, out = ping(bed.lab, bed.domains[0], "10.0.0.2", count=3)
        assert rc == 0 and seqs == [1, 2, 3], out
        after = counters(bed, 0)
        assert after["to_user_no_route"] - before["to_user_no_route"] == 3
        assert after["encapsulated"] == before["encapsulated"]
    finally:
        bed.peers[0].call("set_remote", vid=VID, mac=bed.macs[1], addr=bed.addr(1),
                          kernel_peer=True)


def test_remote_seen_event(bed):
    """h2 forgets d1: the next frame from d1 it decapsulates is reported."""
    bed.peers[1].call("events")
    bed.peers[1].call("del_remote", vid=VID, mac=bed.macs[0])
    try:
        rc, _seqs, out = ping(bed.lab, bed.domains[0], "10.0.0.2", count=2)
        assert rc == 0, out
        assert bed.peers[1].call("event_fd_ready")
        events = bed.peers[1].call("events")
        assert {"kind": "RemoteSeen", "vid": str_vid(), "mac": bed.macs[0].replace(":", ""),
                "addr": "192.0.2.1"} in events
    finally:
        bed.peers[1].call("set_remote", vid=VID, mac=bed.macs[0], addr=bed.addr(0),
                          kernel_peer=True)


def test_legacy_peer_gets_complete_checksums_only(bed):
    """kernel_peer=False: TCP (checksum still to fill, super-frames) goes
    through the engine; ICMP (complete checksums) stays in the kernel."""
    bed.peers[0].call("set_remote", vid=VID, mac=bed.macs[1], addr=bed.addr(1),
                      kernel_peer=False)
    try:
        errs = tcp_in_csum_errors(bed, bed.domains[1])
        before = counters(bed, 0)
        tcp_transfer(bed.lab, bed.domains[0], bed.domains[1], "10.0.0.2", 5_000_000)
        rc, _seqs, out = ping(bed.lab, bed.domains[0], "10.0.0.2", count=3)
        assert rc == 0, out
        after = counters(bed, 0)
        assert after["to_user_partial_csum_to_legacy"] - \
            before["to_user_partial_csum_to_legacy"] > 20
        assert 3 <= after["encapsulated"] - before["encapsulated"] < 10   # the pings
        assert tcp_in_csum_errors(bed, bed.domains[1]) == errs
    finally:
        bed.peers[0].call("set_remote", vid=VID, mac=bed.macs[1], addr=bed.addr(1),
                          kernel_peer=True)


def _udp_payloads(pcap: bytes) -> list[tuple[bytes, bytes]]:
    """(IPv4 header, UDP header and payload) of each Ethernet/IPv4/UDP packet of a pcap."""
    out = []
    off = 24
    while off + 16 <= len(pcap):
        _s, _us, incl, _orig = struct.unpack_from("<IIII", pcap, off)
        pkt = pcap[off + 16:off + 16 + incl]
        off += 16 + incl
        if len(pkt) < 42 or pkt[12:14] != b"\x08\x00":
            continue
        ihl = (pkt[14] & 15) * 4
        if pkt[23] == 17:
            out.append((pkt[14:14 + ihl], pkt[14 + ihl:]))
    return out


def test_wire_is_the_legacy_framing(bed):
    pcap_path = os.path.join(bed.lab.tmp, "wire.pcap")
    cap = bed.lab.spawn(bed.hosts[1], "tcpdump", "-U", "-n", "-i", "eth0", "-c", "3",
                        "-w", pcap_path,
                        "udp and src host 192.0.2.1 and dst host 192.0.2.2 and greater 150",
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    before = counters(bed, 0)["encapsulated"]
    rc, _seqs, out = ping(bed.lab, bed.domains[0], "10.0.0.2", count=3, size=100)
    assert rc == 0, out
    assert counters(bed, 0)["encapsulated"] - before >= 3
    cap.wait(10)
    with open(pcap_path, "rb") as f:
        packets = _udp_payloads(f.read())
    with open(os.path.join(VECTORS, "legacy-vnetd-capture.json")) as f:
        vectors = json.load(f)["vectors"]
    legacy = bytes.fromhex(next(v["udp_payload_hex"] for v in vectors
                                if v["name"] == "data-unicast-arp-reply"))
    icmp = [(ip, udp) for ip, udp in packets if len(udp) > 8 + 4 + 18 + 14 + 20
            and udp[8 + 4 + 18 + 12:8 + 4 + 18 + 14] == b"\x08\x00"
            and udp[8 + 4 + 18 + 14 + 9] == 1]
    assert len(icmp) >= 3
    for ip, udp in icmp:
        sport, dport, ulen, csum = struct.unpack_from("!HHHH", udp)
        assert (sport, dport, csum) == (1798, 1798, 0)
        assert ulen == len(udp)
        assert ip[8] == 64 and struct.unpack_from("!H", ip, 6)[0] & 0x4000 == 0  # TTL, DF clear
        payload = udp[8:]
        # VnetMsgHdr 00 02 00 00, etherip 00 40, vnet id: as the legacy vector
        assert payload[:22] == b"\x00\x02\x00\x00\x00\x40" + VID_RAW == legacy[:22]
        assert payload[22:28] == bytes.fromhex(bed.macs[1].replace(":", ""))
        assert payload[28:34] == bytes.fromhex(bed.macs[0].replace(":", ""))
        assert len(payload) == 4 + 18 + 14 + 20 + 8 + 100


def test_adoption_keeps_traffic_flowing(bed):
    p = bed.peers[0]
    before = counters(bed, 0)["encapsulated"]
    p.call("close")
    try:
        rc, seqs, out = ping(bed.lab, bed.domains[0], "10.0.0.2", count=3)
        assert rc == 0 and seqs == [1, 2, 3], out
    finally:
        reply = p.call("open", underlay="eth0", local=bed.addr(0), mtu=bed.mtu)
    assert reply == {"adopted": True}
    assert p.call("attached") == {str_vid(): bed.taps[0]}
    assert [str_vid(), bed.macs[1].replace(":", ""), bed.addr(1), True] in p.call("remotes")
    assert [str_vid(), bed.macs[0].replace(":", "")] in p.call("locals")
    # counted while no shim was open: the programs and maps are the same
    assert counters(bed, 0)["encapsulated"] - before >= 3
    rc, seqs, out = ping(bed.lab, bed.domains[0], "10.0.0.2", count=3)
    assert rc == 0 and seqs == [1, 2, 3], out


def _our_filters(bed: Bed, ns: str, dev: str, hook: str) -> str:
    return bed.lab.ns_sh(ns, "tc", "filter", "show", "dev", dev, hook, check=False).stdout


def test_purge_removes_ours_only(bed):
    """Runs last: h1's purge removes its filters, clsact and maps; h2 keeps its own."""
    for i in (0, 1):
        assert "xend-vnet:decap" in _our_filters(bed, bed.hosts[i], "eth0", "ingress")
        assert "xend-vnet:encap" in _our_filters(bed, bed.hosts[i], "vnif0097", "egress")
    bed.peers[0].call("purge")
    assert "xend-vnet" not in _our_filters(bed, bed.hosts[0], "eth0", "ingress")
    assert "xend-vnet" not in _our_filters(bed, bed.hosts[0], "vnif0097", "egress")
    qdiscs = bed.lab.ns_sh(bed.hosts[0], "tc", "qdisc", "show", "dev", "eth0").stdout
    assert "clsact" not in qdiscs
    assert "xend-vnet:decap" in _our_filters(bed, bed.hosts[1], "eth0", "ingress")
    assert bed.peers[1].call("attached") == {str_vid(): bed.taps[1]}
    # a new open in h1 finds nothing to adopt
    assert bed.peers[0].call("open", underlay="eth0", local=bed.addr(0),
                             mtu=bed.mtu) == {"adopted": False}
    assert bed.peers[0].call("attached") == {}
    assert bed.peers[0].call("remotes") == []
    # and the user-space path alone still carries everything
    rc, seqs, out = ping(bed.lab, bed.domains[0], "10.0.0.2", count=3)
    assert rc == 0 and seqs == [1, 2, 3], out



@pytest.mark.legacy_vnetd
def test_interop_with_the_legacy_vnetd(bed, legacy_vnetd_binary):
    """h1's kernel path against a legacy C vnetd on a third host (vnet 4,
    which both create at start): pings and TCP both ways, the legacy host
    marked kernel_peer=False so it only gets complete checksums.  The binary
    comes from --legacy-vnetd or XEND_VNET_LEGACY_VNETD (conftest.py)."""
    from kernel_shim_bed import PeerProc
    lab = type(bed.lab)("kbl")
    try:
        lab.underlay()
        h1 = lab.host("h1", "192.0.2.1")
        h2 = lab.host("h2", "192.0.2.2")
        lab.start_vnetd(h1, "--no-kernel-path")     # the peer drives h1's shim
        state = os.path.join(lab.tmp, "legacy")
        os.makedirs(state)
        lab.spawn(h2, *legacy_vnetd.command(legacy_vnetd_binary, "192.0.2.2", state, ["4"]),
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while lab.ns_sh(h2, "ip", "link", "show", "vnif0004", check=False).returncode:
            assert time.monotonic() < deadline, "legacy vnetd made no vnif0004"
            time.sleep(0.2)
        lab.ns_sh(h2, "ip", "link", "set", "vnif0004", "up")
        lab.bridge(h1, "vnet4", "vnif0004")
        lab.bridge(h2, "vnet4", "vnif0004")
        d1 = lab.domain("d1", h1, "vnet4", "10.0.4.1", mac="02:00:00:00:04:01")
        d2 = lab.domain("d2", h2, "vnet4", "10.0.4.2", mac="02:00:00:00:04:02")
        peer = PeerProc(lab, h1)
        peer.call("open", underlay="eth0", local="192.0.2.1")
        peer.call("attach", vid="4", tap_ifindex=peer.call("ifindex", name="vnif0004"))
        peer.call("set_remote", vid="4", mac="02:00:00:00:04:02", addr="192.0.2.2",
                  kernel_peer=False)
        rc, seqs, out = ping(lab, d1, "10.0.4.2", count=5)
        assert rc == 0 and seqs == [1, 2, 3, 4, 5], out
        tcp_transfer(lab, d1, d2, "10.0.4.2", 5_000_000)
        tcp_transfer(lab, d2, d1, "10.0.4.1", 5_000_000)
        rc, seqs, out = ping(lab, d1, "10.0.4.2", count=3, size=1472)
        assert rc == 0 and seqs == [1, 2, 3], out
        (c,) = peer.call("counters").values()
        assert c["encapsulated"] >= 5 and c["decapsulated"] > 100
        assert c["to_user_partial_csum_to_legacy"] > 0 and c["to_user_no_fit"] >= 3
        assert tcp_in_csum_errors(bed, d2) == 0
    finally:
        lab.close()
