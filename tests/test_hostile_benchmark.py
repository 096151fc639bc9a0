"""benchmarks/hostile.py: its packets, its send schedule, its table, and (root)
a short run that must finish and leave nothing behind.

Each kind's packets go through a real ``EngineCore`` and must end where
the kind means them to: learned, delivered, relayed, kept for reassembly,
or dropped under the reason the attack aims at.
"""

from __future__ import annotations

import struct

import fcntl
import json
import os
import subprocess
import sys
import time

import pytest
from core_helpers import consistent, make_core
from netns import REPO, is_root, namespaces
from security_helpers import Clock, context

from xend_vnet import sxp
from xend_vnet.kernel_shim.core.actions import DeliverFrame, SendRaw
from xend_vnet.kernel_shim.wire import codec, offload, segments
from xend_vnet.vnet_id import VnetId

sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import hostile_packets as hp  # noqa: E402
import hostile_report as report  # noqa: E402

KEY = bytes(range(32))
ME, ATTACKER, GROUP = "198.51.100.1", "198.51.100.3", "224.10.0.1"
TARGET = hp.Target(secured_key=KEY)


def engine(peer: bool = False):
    core = make_core(ME, *([TARGET.peer] if peer else []), vnet=None, offload=True,
                     context=context(7, Clock(time.time_ns())))
    for v in TARGET.clear:
        core.add_vnet(VnetId.parse(v), f"vnif{v:0>4}")
    core.add_vnet(VnetId.parse(TARGET.secured), "vnif009a", "auth", KEY)
    return core


def feed(kind: str, n: int = 40, peer: bool = False, src: str = ATTACKER):
    core, forger, actions = engine(peer), hp.Forger(kind, TARGET, sender=3), []
    for _ in range(n):
        packet = forger.next()
        if kind == "vfwd":
            packet = packet[28:]        # the UDP payload of the raw IPv4 packet
        actions += core.receive_udp(packet, src, GROUP, 1000.0)
    assert consistent(core)
    return core, actions


def test_forged_announces_are_learned_with_the_trailer_and_allowed_addresses():
    forger = hp.Forger("varp", TARGET, sender=2)
    packets = [forger.next() for _ in range(40)]
    headers = [codec.VarpHeader.decode(p) for p in packets]
    assert all(segments.has_capability(p) for p in packets)
    assert {h.vnet for h in headers} == set(TARGET.clear_raw)
    assert len({h.vmac for h in headers}) == 40
    assert all(hp.forged_address_ok(h.ipv4) for h in headers)
    core, _ = feed("varp")
    assert core.counters.rx_varp == 40 and not core.counters.rx_dropped


def test_forged_data_is_delivered_from_fresh_macs():
    core, actions = feed("data")
    frames = [a.frame for a in actions if isinstance(a, DeliverFrame)]
    assert len(frames) == 40 and len({f[6:12] for f in frames}) == 40
    assert core.counters.rx_data == 40


def test_random_datagrams_are_dropped():
    core, _ = feed("random", 200)
    assert sum(core.counters.rx_dropped.values()) >= 190


def test_segments_wait_for_reassembly_or_fail_the_header_check():
    core, _ = feed("segments", 40)
    assert core.counters.rx_dropped.get("fast_bad_vnet_hdr") == 10
    assert core.counters.rx_fast == 30


def test_vfwd_from_the_spoofed_peer_is_taken_and_re_multicast():
    forger = hp.Forger("vfwd", TARGET)
    packet = forger.next()
    assert packet[9] == 17 and packet[8] == 1          # UDP, TTL 1
    assert codec.ipv4_text(packet[12:16]) == TARGET.peer
    assert codec.ipv4_text(packet[16:20]) == GROUP
    inner = codec.decode_vfwd(packet[28:])
    assert hp.forged_address_ok(inner.src) and inner.dport == codec.VARP_PORT
    core, actions = feed("vfwd", 20, peer=True, src=TARGET.peer)
    assert core.counters.vfwd_rx == 20
    assert len([a for a in actions if isinstance(a, SendRaw)]) == 20
    stranger, _ = feed("vfwd", 5)
    assert stranger.counters.rx_dropped == {"vfwd_not_peer": 5}


def test_forged_secured_packets_reach_the_tag_check():
    core, _ = feed("secure", 10)
    assert core.counters.rx_dropped == {"bad_icv": 10}


def test_domain_super_frames_have_gso_size_one():
    forger = hp.Forger("domain-gso", TARGET)
    packet = forger.next()
    flags, gso_type, _, gso_size, _, _ = struct.unpack_from("=BBHHHH", packet)
    assert gso_type == offload.GSO_TCPV4 and gso_size == 1
    core = engine()
    vid = VnetId.parse(TARGET.measured)
    # What the attack meets: the engine's floor on gso_size (docs/security.md).
    assert core.receive_tap(vid, packet[offload.VNET_HDR_LEN:], 1.0, packet) == []
    assert core.vnet(vid).counters.dropped.get("gso_too_small") == 1


def test_domain_fresh_macs_are_announced():
    forger, core = hp.Forger("domain-macs", TARGET), engine()
    vid = VnetId.parse(TARGET.measured)
    for _ in range(5):
        packet = forger.next()
        assert packet[:offload.VNET_HDR_LEN] == offload.ZERO_VNET_HDR
        core.receive_tap(vid, packet[offload.VNET_HDR_LEN:], 1.0)
    assert core.vnet(vid).counters.announced == 5


def test_forged_addresses_stay_in_test_nets_and_ten():
    addrs = {hp.fresh_address(i, s) for i in range(4000) for s in (0, 5)}
    assert len(addrs) > 3000
    assert all(hp.forged_address_ok(a) for a in addrs)
    assert not hp.forged_address_ok("192.168.1.1") and not hp.forged_address_ok("8.8.8.8")


def test_the_schedule_sends_at_the_rate_in_batches_and_skips_when_late():
    s = hp.RateSchedule(1000.0, start=0.0, batch=32)
    assert s.due(0.0) == 0 and s.wait(0.0) == pytest.approx(0.001)
    assert s.due(0.010) == 10
    s.done(10)
    assert s.due(0.010) == 0 and s.wait(0.010) == pytest.approx(0.001)
    assert s.due(0.040) == 30
    s.done(30)
    # A sender stalled for 1 s owes 960; it sends at most 50 ms' worth late.
    assert s.due(1.0) == 32 and s.skipped == 960 - 50
    s.done(32)
    assert s.sent + s.skipped + s.due(1.0) == 1000
    with pytest.raises(ValueError):
        hp.RateSchedule(0, 0.0)


def test_counters_flatten_and_growth():
    stats = sxp.parse_all("(engine_stats (rx_datagrams 5) (vfwd_window_full 0)\n"
                          " (rx_dropped (bad_icv 3) (unknown_vnet 1)) (tap_dropped))\n"
                          "(vnet_stats (vnet 0:0:0:0:0:0:0:99) (vnetif vnif0099)"
                          " (learned 2) (dropped (no_tap 4)))\n")
    status = sxp.parse_all("(engine.status (pid 1) (io-dropped (send_enetunreach 7)))")
    flat = report.flat_counters(stats, status[0][1:])
    assert flat["rx_dropped/bad_icv"] == 3 and flat["vnet 99/dropped/no_tap"] == 4
    assert flat["io_dropped/send_enetunreach"] == 7 and flat["vnet 99/learned"] == 2
    later = dict(flat, **{"rx_dropped/bad_icv": 10, "vnet 99/learned": 9})
    assert report.grown(flat, later) == {"rx_dropped/bad_icv": 7}
    assert report.grown(flat, later, drops_only=False)["vnet 99/learned"] == 7


def test_tables_reported_or_not():
    forms = sxp.parse_all("(engine.status (pid 1) (tables (varp 10 10) "
                          "(vifs (size 3) (bound 3))))")
    tables = report.reported_tables(forms[0][1:])
    assert tables == {"varp": [10, 10], "vifs": [3, 3]}
    assert report.all_at_bound(tables)
    assert not report.all_at_bound({"varp": [9, 10]})
    assert report.reported_tables([["pid", "1"]]) == {} and not report.all_at_bound({})


def test_ping_output_and_the_table():
    text = ("64 bytes from 10.99.0.2: icmp_seq=1 ttl=64 time=0.5 ms\n"
            "64 bytes from 10.99.0.2: icmp_seq=2 ttl=64 time=0.9 ms\n"
            "64 bytes from 10.99.0.2: icmp_seq=4 ttl=64 time=0.7 ms\n"
            "4 packets transmitted, 3 received, 25% packet loss, time 150ms\n")
    assert report.parse_ping(text) == {"sent": 4, "received": 3, "loss_percent": 25.0,
                                       "rtt_median_ms": 0.7}
    assert report.parse_ping("")["loss_percent"] == 100.0
    base = {"tcp_ratio": 1.0, "engine_cpu_percent": 0.1, "loss_percent": 0.0,
            "rtt_median_ms": 0.6, "rss_before_mib": 40.0, "rss_after_mib": 40.5,
            "status_median_ms": 2.0, "status_max_ms": 5.0}
    base.update(host_cpu_percent=10.0)
    kind = dict(base, asked_rate=5000, achieved_rate=4990.0, engine_cpu_percent=80.0,
                engine_cpu_per_kpps=16.03, host_cpu_per_kpps=30.0, tcp_ratio=0.5,
                drops={"rx_dropped/bad_icv": 12})
    text = report.table(base, {"secure": kind})
    lines = text.split("\n")
    assert lines[0].split()[:3] == ["kind", "asked/s", "sent/s"]
    assert lines[2].split()[:5] == ["secure", "5000", "4990", "80.0", "16.03"]
    assert lines[2].split()[6] == "30.00"
    assert len(lines[1]) == len(lines[2]) == len(lines[0])
    assert "40.0>40.5" in lines[2] and "0.50" in lines[2]
    assert "  secure: rx_dropped/bad_icv +12" in lines


# -- root: a short run ----------------------------------------------------------------

def _lock_free() -> bool:
    path = os.path.join("/tmp", "xend-vnet-benchmark.lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


@pytest.mark.root
@pytest.mark.skipif(not is_root(), reason="needs root and /dev/net/tun")
def test_short_run_completes_and_cleans_up(tmp_path):
    if not _lock_free():
        pytest.skip("another benchmark holds the benchmarks' lock")
    out = tmp_path / "hostile.json"
    p = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "hostile.py"),
         "--kinds", "varp,domain-macs", "--seconds", "3", "--rate", "300",
         "--pings", "20", "--iperf-seconds", "1", "--no-again", "--json", str(out)],
        capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert not [ns for ns in namespaces() if ns.startswith("xhb-")]
    r = json.loads(out.read_text())
    assert r["leaks"] == [] and r["isolation_problems"] == []
    assert set(r["kinds"]) == {"varp", "domain-macs"}
    for kind in r["kinds"].values():
        assert 150 < kind["achieved_rate"] < 400, kind
        assert kind["status_samples"] > 0 and kind["loss_percent"] is not None
    assert r["kinds"]["varp"]["counters_grown"].get("vnet 99/learned", 0) > 0
    assert r["baseline"]["tcp_bits_per_second"] > 0
