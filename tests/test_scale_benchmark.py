"""The many-engines mode of benchmarks/scale.py (target 6), small.

Four engines on one link, one vnet, a bounded load (broadcasts and pings
from every domain), then a quiet period.  Every host must receive each
group datagram the others sent exactly once (no amplification, no loss on
this veth LAN), send no group datagram while quiet (no storm), and the
benchmark must leave no namespace behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from netns import REPO, is_root, namespaces

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not is_root(), reason="needs root and /dev/net/tun")]

PREFIX = "xvs-t"
ENGINES = 4
BURSTS = 3


def test_engines_on_one_link_no_amplification(tmp_path):
    out = tmp_path / "scale.json"
    p = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "scale.py"),
         "--engines", str(ENGINES), "--bursts", str(BURSTS), "--pings", "2",
         "--quiet", "5", "--prefix", PREFIX, "--json", str(out)],
        capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert not [ns for ns in namespaces() if ns.startswith(PREFIX)]
    r = json.loads(out.read_text())
    assert r["engines"] == ENGINES and len(r["hosts"]) == ENGINES
    assert r["ping_sent"] == r["ping_replies"] > 0, r
    group_tx = [h["floods_sent"] + h["announces_sent"] for h in r["hosts"]]
    for i, h in enumerate(r["hosts"]):
        # Every broadcast floods once; every domain is announced once.
        assert BURSTS <= h["floods_sent"] <= BURSTS + 2, h
        assert h["announces_sent"] == 1, h
        assert h["group_tx_kernel"] == group_tx[i], h
        # Each group datagram of the others arrives once: not amplified, not lost.
        assert h["group_rx"] == sum(group_tx) - group_tx[i], h
        assert h["flood_ratio"] == h["announce_ratio"] == h["group_ratio"] == 1.0, h
        assert h["rx_dropped"] == 0 and h["vnet_dropped"] == 0, h
        # Quiet: no group traffic at all.
        assert h["quiet_group_tx"] == 0 and h["quiet_group_rx"] == 0, h
    assert r["quiet_group_rx_total"] == r["quiet_group_tx_total"] == 0
