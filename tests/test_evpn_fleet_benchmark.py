"""benchmarks/evpn_fleet.py: its pure parts (the plan, what counts as
converged, the ping arithmetic, the report), and a small run with real FRR
(root) that must pass and leave nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from frr_lab import frr_available
from netns import REPO, is_root, namespaces

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import evpn_fleet as bench  # noqa: E402

from xend_vnet.kernel_shim.datapath.vxlan.device import DeviceFdb  # noqa: E402


def test_plan_spreads_hosts_over_subnets_and_places_two_reflectors():
    p = bench.plan(32, 4, 100, 4)
    assert [h.subnet for h in p.hosts[:6]] == [0, 1, 2, 3, 0, 1]
    assert sorted({(h.subnet, h.last) for h in p.hosts}) == sorted(
        {(s, 11 + k) for s in range(4) for k in range(8)})
    assert len({h.name for h in p.hosts}) == 32
    assert p.vnets[0] == 0x1000 and len(p.vnets) == 100 and p.sample == p.vnets[:4]
    assert p.reflectors == (("rr1", 0, 1), ("rr2", 2, 1))
    assert bench.plan(3, 2, 1, 1).reflectors == (("rr1", 0, 1), ("rr2", 1, 1))


@pytest.mark.parametrize("args", [(2, 2, 5, 1), (4, 1, 5, 1), (3, 4, 5, 1), (4, 2, 5, 0),
                                  (4, 2, 5, 6)])
def test_plans_that_cannot_be(args):
    with pytest.raises(ValueError):
        bench.plan(*args)


@pytest.mark.parametrize("hosts, subnets", [(32, 4), (4, 2), (3, 2), (9, 3)])
def test_migrations_cross_subnets_and_are_watched_from_elsewhere(hosts, subnets):
    p = bench.plan(hosts, subnets, 10, 2)
    for m in range(3):
        k, src, dst, pinger = bench.migration_plan(p, m)
        assert k == m % 2 and len({src, dst, pinger}) == 3
        assert p.hosts[src].subnet != p.hosts[dst].subnet
        if subnets > 2:
            assert p.hosts[pinger].subnet not in (p.hosts[src].subnet, p.hosts[dst].subnet)


def test_domain_macs_are_unique_and_local():
    macs = {bench.domain_mac(h, v) for h in range(240) for v in range(0x1000, 0x1000 + 100)}
    assert len(macs) == 240 * 100
    assert all(int(m[:2], 16) & 0x02 and not int(m[:2], 16) & 0x01 for m in macs)
    assert bench.domain_ip(3, 0) == "10.88.3.1"


def test_missing_counts_every_absent_flood_entry_and_mac():
    addresses = {0: "192.0.2.11", 1: "198.51.100.11", 2: "192.0.2.12"}
    v = 0x1000
    full = DeviceFdb(["198.51.100.11", "192.0.2.12"],
                     {bench.domain_mac(1, v): "198.51.100.11",
                      bench.domain_mac(2, v): "192.0.2.12"}, set(), set())
    assert bench.missing({v: full}, addresses, 0) == 0
    wrong = DeviceFdb(["198.51.100.11"], {bench.domain_mac(1, v): "192.0.2.12"}, set(), set())
    assert bench.missing({v: wrong}, addresses, 0) == 3
    assert bench.missing({v: None, v + 1: full}, addresses, 0) == 4 + 2


PING_D = """\
PING 10.88.0.4 (10.88.0.4) 56(84) bytes of data.
[1700000000.000000] 64 bytes from 10.88.0.4: icmp_seq=1 ttl=64 time=0.1 ms
[1700000000.010000] 64 bytes from 10.88.0.4: icmp_seq=2 ttl=64 time=0.1 ms
[1700000000.450000] 64 bytes from 10.88.0.4: icmp_seq=46 ttl=64 time=0.1 ms
[1700000000.460000] 64 bytes from 10.88.0.4: icmp_seq=47 ttl=64 time=0.1 ms

--- 10.88.0.4 ping statistics ---
47 packets transmitted, 4 received, 91% packet loss, time 460ms
"""


def test_ping_arithmetic():
    times = bench.reply_times(PING_D)
    assert times == [1700000000.0, 1700000000.01, 1700000000.45, 1700000000.46]
    assert bench.max_gap(times) == pytest.approx(0.44)
    assert bench.max_gap(times, end=1700000001.46) == pytest.approx(1.0)
    assert bench.max_gap([]) == float("inf")
    assert bench.responders("64 bytes from 10.88.0.2: icmp_seq=1\n"
                            "64 bytes from 10.88.0.3: icmp_seq=1 (DUP!)\n") == {
        "10.88.0.2", "10.88.0.3"}
    assert bench.spread([3.0, 1.0, 2.0]) == {"min": 1.0, "median": 2.0, "mean": 2.0,
                                             "max": 3.0}


def test_bridge_entry_notifications_are_told_apart():
    header = bytes(4)
    new = header + (28).to_bytes(2, sys.byteorder) + bytes(10) + bytes([7])
    assert bench.is_bridge_entry(new + bytes(11))
    gone = header + (29).to_bytes(2, sys.byteorder) + bytes(10) + bytes([7])
    assert bench.is_bridge_entry(gone)
    arp = header + (28).to_bytes(2, sys.byteorder) + bytes(10) + bytes([2])
    link = header + (16).to_bytes(2, sys.byteorder) + bytes(10) + bytes([7])
    assert not bench.is_bridge_entry(arp) and not bench.is_bridge_entry(link)
    assert not bench.is_bridge_entry(b"")


def _result(**changes):
    s = {"min": 1.0, "median": 2.0, "mean": 2.0, "max": 3.0}
    parts = {"zebra": 10.0, "bgpd": 20.0, "vnetd": 30.0, "xend-vnet": 40.0}
    r = {"hosts": 32, "subnets": 4, "vnets": 100, "frr": "8.4.4",
         "machine": {"nproc": 2, "cpu": "x", "kernel": "6"}, "restore_s": 50.0,
         "frr_start_s": 3.0, "convergence_s": 9.5, "poll_round_s": 1.2,
         "host_converged_s": s, "flood_entries_per_host": 3100,
         "remote_macs_per_host": 3100, "ping_ok": 127, "ping_sent": 128,
         "ping_ok_second_pass": 128, "softnet_drops_during_pings": 0,
         "sample_vnets": ["1000", "1001", "1002", "1003"], "host_rss_mib": s,
         "rss_parts_mib": parts, "idle_s": 30.0, "host_idle_cpu_pct": s,
         "cpu_parts_pct": parts, "reflector_rss_mib": s, "reflector_idle_cpu_pct": s,
         "converged": True,
         "migrations": [{"domain": "d0h31", "from": "h31", "to": "h0", "from_subnet": 3,
                         "to_subnet": 0, "pinger": "d0h1", "gap_s": 0.2, "replies": 590,
                         "sent": 600}]}
    r.update(changes)
    return r


def test_report_says_pass_only_when_every_target_is_met():
    text = bench.report(_result())
    assert text.endswith("verdict: PASS (full convergence, every domain reached, every "
                         "migration back within 1 s)\n")
    assert "convergence from the last FRR start: 9.5 s" in text
    assert "longest without replies 0.20 s, 590/600 replies" in text
    slow = _result(migrations=[dict(_result()["migrations"][0], gap_s=1.2)])
    assert "verdict: FAIL" in bench.report(slow)
    assert "verdict: FAIL" in bench.report(_result(ping_ok_second_pass=127))
    assert "127/128 domains heard every other domain" in text
    assert "verdict: FAIL" in bench.report(_result(converged=False))


@pytest.mark.root
@pytest.mark.skipif(not (is_root() and frr_available()), reason="needs root and FRR")
def test_a_small_fleet_passes_and_leaves_nothing(tmp_path):
    out = tmp_path / "fleet.json"
    p = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "evpn_fleet.py"),
                        "--hosts", "4", "--subnets", "2", "--vnets", "3", "--sample", "1",
                        "--idle", "2", "--migrations", "1", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert not [ns for ns in namespaces() if ns.startswith(bench.PREFIX)]
    r = json.loads(out.read_text())
    assert r["converged"] and r["ping_ok_second_pass"] == r["ping_sent"] == 4
    assert r["flood_entries_per_host"] == r["remote_macs_per_host"] == 3 * 3
    assert r["migrations"][0]["gap_s"] < 1.0
    assert (tmp_path / "fleet.txt").read_text() == bench.report(r)


def test_cpu_used_sums_by_role_and_daemon():
    before = {"rr1": {"bgpd": 1.0}, "h0": {"bgpd": 2.0, "zebra": 1.0}}
    after = {"rr1": {"bgpd": 4.0}, "rr2": {"bgpd": 2.0}, "h0": {"bgpd": 3.0, "zebra": 1.5},
             "h1": {"bgpd": 1.0}}
    assert bench.cpu_used(before, after) == {"reflector bgpd": 5.0, "host bgpd": 2.0,
                                             "host zebra": 0.5}
