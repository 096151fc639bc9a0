"""`vnetd --address` pins the address the engine announces *and* sends from
(docs/peering.md), so hosts that learn from the outer source (clear vnets, legacy
hosts) learn the same address the announces name (root); with the kernel path
(which encapsulates from the care-of address) and without it."""

from __future__ import annotations

import pytest
from e2e_helpers import ping, varp_entries
from netns import Lab

pytestmark = pytest.mark.root

MAC_A = "aa:00:00:00:97:0a"
MAC_B = "aa:00:00:00:97:0b"


@pytest.fixture
def lab(data_path):
    lab = Lab("xvaddr-", data_path)
    try:
        yield lab
    finally:
        lab.close()


def test_address_option_is_the_source_of_what_the_engine_sends(lab):
    lab.underlay()
    a = lab.host("a", "192.0.2.1")
    b = lab.host("b", "192.0.2.2")
    # A second address on a's link: without pinning, the routing table would
    # send from the primary 192.0.2.1.
    lab.ns_sh(a, "ip", "addr", "add", "192.0.2.11/24", "dev", "eth0")
    conf = "(vnet.add (id 97) (vnetif vnif97))\n"
    for ns, extra in ((a, ["--address", "192.0.2.11"]), (b, [])):
        path = f"{lab.tmp}/{ns}.conf"
        with open(path, "w") as f:
            f.write(conf)
        d = lab.start_vnetd(ns, "--no-default-vnets", "-f", path, *extra)
        lab.bridge(ns, "vnet97", "vnif97")
        if ns == a:
            da = d
        else:
            db = d
    dom_a = lab.domain("da", a, "vnet97", "10.97.0.1", mac=MAC_A)
    lab.domain("db", b, "vnet97", "10.97.0.2", mac=MAC_B)
    rc, _seqs, out = ping(lab, dom_a, "10.97.0.2", count=3, interval=0.2)
    assert rc == 0, out
    learned = varp_entries(db)[MAC_A]
    assert learned["addr"] == "192.0.2.11", learned
    assert da.status()["address"] == "192.0.2.11"
