"""Bridge helpers over netlink, in a network namespace of their own (root)."""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest
from netns import call_in_netns

pytestmark = pytest.mark.root

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root and network namespaces")


@pytest.fixture
def ns():
    name = f"xvm-br-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "add", "xv0", "type", "veth", "peer", "name",
                        "xv1"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def ip_details(ns: str, name: str) -> str:
    return subprocess.run(["ip", "-n", ns, "-d", "link", "show", name], capture_output=True,
                          text=True, check=True).stdout


@needs_root
def test_bridge_life_cycle(ns):
    def scenario():
        from xend_vnet import bridges as b
        out = {"before": b.link_exists("vnet97")}
        out["created"] = b.ensure_bridge("vnet97")
        out["adopted"] = b.ensure_bridge("vnet97")
        out["is_bridge"] = (b.is_bridge("vnet97"), b.is_bridge("xv0"), b.is_bridge("nope"))
        b.enslave("vnet97", "xv0")
        b.set_up("xv0")
        out["ports"] = b.bridge_ports("vnet97")
        out["master"] = (b.master_of("xv0"), b.master_of("xv1"))
        out["bridges"] = b.list_bridges()
        return out

    out = call_in_netns(ns, scenario)
    assert out == {"before": False, "created": True, "adopted": False,
                   "is_bridge": (True, False, False), "ports": ["xv0"],
                   "master": ("vnet97", None), "bridges": {"vnet97": ["xv0"]}}
    details = ip_details(ns, "vnet97")
    assert "stp_state 0" in details and "forward_delay 0" in details
    assert "state UP" in details or ",UP" in details
    assert "master vnet97" in ip_details(ns, "xv0")

    def teardown():
        from xend_vnet import bridges as b
        b.release("xv0")
        released = b.master_of("xv0")
        b.enslave("vnet97", "xv0")
        b.delete_bridge("vnet97")
        return released, b.link_exists("vnet97"), b.master_of("xv0")

    assert call_in_netns(ns, teardown) == (None, False, None)


@needs_root
def test_adopting_keeps_an_existing_bridge_and_its_ports(ns):
    subprocess.run(["ip", "-n", ns, "link", "add", "br9", "type", "bridge", "stp_state", "1",
                    "forward_delay", "1500"], check=True)
    subprocess.run(["ip", "-n", ns, "link", "set", "xv1", "master", "br9"], check=True)

    def scenario():
        from xend_vnet import bridges as b
        return b.ensure_bridge("br9"), b.bridge_ports("br9")

    assert call_in_netns(ns, scenario) == (False, ["xv1"])
    # Adopted: brought up, but its owner's STP and forward delay are kept.
    details = ip_details(ns, "br9")
    assert "stp_state 1" in details and "forward_delay 1500" in details
    assert "state UP" in details or ",UP" in details


@needs_root
def test_errors_name_the_interface(ns):
    def scenario():
        from xend_vnet import bridges as b
        messages = []
        for call in (lambda: b.ensure_bridge("xv0"), lambda: b.delete_bridge("xv0"),
                     lambda: b.enslave("nobr", "xv0"), lambda: b.enslave("xv1", "xv0"),
                     lambda: b.set_up("ghost"), lambda: b.master_of("ghost"),
                     lambda: b.bridge_ports("ghost"), lambda: b.delete_bridge("ghost"),
                     lambda: b.ensure_bridge("x" * 16)):
            try:
                call()
                messages.append(None)
            except b.BridgeError as e:
                messages.append(str(e))
        return messages

    m = call_in_netns(ns, scenario)
    assert m[0] == "xv0: exists and is not a bridge (kind veth)"
    assert m[1] == "xv0: is not a bridge; refusing to delete it"
    assert m[2] == "nobr: no such interface"
    assert m[3].startswith("xv0: cannot add to bridge xv1")
    assert m[4] == m[5] == "ghost: no such interface"
    assert m[6] == m[7] == "ghost: no such interface"
    assert m[8].startswith("x" * 16 + ": ")
