"""End-to-end: our engine beside the real legacy C vnetd (root, namespaces ``ktl-*``).

Host k runs our engine, host l the legacy daemon (benchmarks/legacy_vnetd.py
runs it as a host of its own), both carrying vnet 61 on a bridge with one
domain each: dk (10.61.0.1) and dl (10.61.0.2).  Every test runs twice:
with our engine on the kernel path and with ``--no-kernel-path``
(tests/conftest.py's ``data_path``).  The legacy host's underlay is
captured from the start, and the last test checks every frame our host
sent it: IPv4, TCP and UDP checksums complete (benchmarks/capture_check.py),
since the legacy daemon writes what it receives to a TAP without offloads.

The legacy binary is never part of the project: give its path with
``pytest --legacy-vnetd PATH`` or ``XEND_VNET_LEGACY_VNETD=PATH``; without
it these tests are skipped, and the summary (``-rs``) says so.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from e2e_helpers import kernel_frames, no_loss_after_first, on_data_path, ping, tcp_transfer
from e2e_helpers import vnet_paths
from netns import KERNEL, REPO, Lab, wait_for

sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import capture_check  # noqa: E402
import legacy_vnetd  # noqa: E402

pytestmark = [pytest.mark.root, pytest.mark.legacy_vnetd]

OURS, LEGACY = "192.0.2.1", "192.0.2.2"
VNET, V61 = "61", "0000:0000:0000:0000:0000:0000:0000:0061"
TAP, BRIDGE = legacy_vnetd.tap_name(VNET), "vnet61"
DK, DL = "10.61.0.1", "10.61.0.2"
# Every vnet datagram: UDP 1798, IP protocol 97 and later fragments (no port).
CAPTURE_FILTER = "udp port 1798 or ip proto 97 or (ip[6:2] & 0x1fff != 0)"


class World:
    def __init__(self, lab: Lab, binary: str):
        self.lab = lab
        lab.underlay()
        self.k = lab.host("k", OURS)
        self.l = lab.host("l", LEGACY)
        conf = os.path.join(lab.tmp, "k.conf")
        with open(conf, "w") as f:
            f.write(f"(vnet.add (id {VNET}))\n")
        self.engine = lab.start_vnetd(self.k, "--no-default-vnets", "-f", conf)
        lab.bridge(self.k, BRIDGE, TAP)
        state = tempfile.mkdtemp(prefix="legacy-", dir=lab.tmp)
        self.legacy_log = os.path.join(lab.tmp, "legacy.log")
        with open(self.legacy_log, "w") as log:
            self.legacy = lab.spawn(self.l, *legacy_vnetd.command(binary, LEGACY, state, [VNET]),
                                    stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.legacy.poll() is None and lab.ns_sh(
            self.l, "ip", "link", "show", TAP, check=False).returncode == 0,
            what=f"the legacy daemon's {TAP}")
        lab.bridge(self.l, BRIDGE, TAP)
        self.pcap = os.path.join(lab.tmp, "legacy-underlay.pcap")
        self.capture = lab.spawn(self.l, "tcpdump", "-i", "eth0", "-n", "-s", "0", "-U",
                                 "-B", "32768", "-Z", "root", "-w", self.pcap, CAPTURE_FILTER,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert "listening on" in self.capture.stderr.readline()
        self.dk = lab.domain("dk", self.k, BRIDGE, DK)
        self.dl = lab.domain("dl", self.l, BRIDGE, DL)

    def legacy_alive(self) -> str:
        with open(self.legacy_log) as f:
            return "" if self.legacy.poll() is None else f"legacy vnetd exited: {f.read()}"

    def stop_capture(self) -> tuple[capture_check.Report, str]:
        """What the capture holds, and tcpdump's counts: captured, received
        by its filter, dropped by the kernel."""
        time.sleep(1)                 # it writes what it has read before it stops
        self.capture.send_signal(signal.SIGINT)
        _out, err = self.capture.communicate(timeout=10)
        counts = [int(n) for n in re.findall(r"^(\d+) packets? (?:captured|received by filter"
                                             r"|dropped by kernel)", err, re.M)]
        assert len(counts) == 3, err
        return capture_check.check_file(self.pcap, sources={OURS}), counts


@pytest.fixture(scope="module")
def world(data_path, legacy_vnetd_binary):
    if shutil.which("tcpdump") is None:
        pytest.skip("needs tcpdump (make setup installs it)")
    lab = Lab("ktl-", data_path=data_path)
    try:
        w = World(lab, legacy_vnetd_binary)
        wait_for(lambda: ping(lab, w.dk, DL, count=1)[0] == 0, timeout=20,
                 what="dk to reach dl through the legacy daemon")
        yield w
    finally:
        lab.close()


def test_our_engine_says_which_path_carries_the_vnet(world, data_path):
    assert on_data_path(vnet_paths(world.engine)[V61], data_path), vnet_paths(world.engine)


def test_ping_both_ways(world):
    for src, dst in ((world.dk, DL), (world.dl, DK)):
        _rc, seqs, out = ping(world.lab, src, dst, count=10, interval=0.1)
        assert no_loss_after_first(seqs, 10) and seqs[0] == 1, out
    assert not world.legacy_alive()


def test_full_size_ping_both_ways(world):
    # 1472 bytes of ICMP: 1514-byte frames, whose datagrams the hosts fragment.
    for src, dst in ((world.dk, DL), (world.dl, DK)):
        rc, seqs, out = ping(world.lab, src, dst, count=5, interval=0.2, size=1472,
                             extra=("-M", "do"))
        assert rc == 0 and seqs == [1, 2, 3, 4, 5], out


def test_tcp_both_ways_intact(world, data_path):
    before = kernel_frames(world.engine, VNET)
    tcp_transfer(world.lab, world.dk, world.dl, DL, 8_000_000, timeout=120)
    tcp_transfer(world.lab, world.dl, world.dk, DK, 8_000_000, timeout=120)
    carried = kernel_frames(world.engine, VNET) - before
    if data_path == KERNEL:
        assert carried > 4000, f"the kernel path carried only {carried} frames"
    else:
        assert carried == 0
    assert not world.legacy_alive()


def test_every_frame_reaching_the_legacy_host_has_complete_checksums(world):
    report, (captured, received, dropped) = world.stop_capture()
    assert captured == received and dropped == 0, (captured, received, dropped)  # every frame
    assert report.fast == 0                       # never our engines' framing
    assert report.gso_frames == 0                 # nor super-frames, whatever the link
    assert report.data_frames > 5000, vars(report)
    assert report.l4_checked > 5000, vars(report)     # the TCP both ways came through
    assert report.bad == 0, report.problems
