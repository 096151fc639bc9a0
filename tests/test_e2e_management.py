"""xm -> xend-vnet -> vnetd, all real, in one emulated host (root).

The host is a network namespace with a veth link, an address and the
multicast route; vnetd and xend-vnet run in it with per-test paths; `xm` is
run as an operator would, from a working directory of its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import xmlrpc.client

import pytest
from netns import REPO, Lab, wait_for

from xend_vnet.httpu import server_proxy

pytestmark = pytest.mark.root

VNET97 = "(vnet (id 97) (bridge vnet97) (vnetif vnif97) (security none))\n"


class Host:
    """One emulated Xen host: its namespace, engine and xend-vnet."""

    def __init__(self, lab: Lab):
        self.lab = lab
        lab.underlay()
        self.ns = lab.host("h1", "192.0.2.1")
        self.dir = os.path.join(lab.tmp, "host")
        os.makedirs(self.dir)
        self.engine_sock = os.path.join(self.dir, "vnetd.sock")
        self.xend_sock = os.path.join(self.dir, "xmlrpc.sock")
        self.state = os.path.join(self.dir, "state")
        self.engine = None
        self.server = None
        self.env = dict(os.environ, PYTHONPATH=REPO, VNETD_SOCKET=self.engine_sock,
                        XM_SERVER=f"httpu://{self.xend_sock}",
                        XEND_CONFIG=os.path.join(self.dir, "no-xend-config.sxp"))

    def start_engine(self):
        self.engine = self.lab.start_vnetd(self.ns, "--no-default-vnets",
                                           control=self.engine_sock, name="vnetd")

    def stop_engine(self):
        assert self.engine.stop() == 0, self.engine.log()

    def start_server(self):
        log = open(os.path.join(self.dir, "xend-vnet.log"), "ab")
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, "-m", "xend_vnet.xmlrpc.cli",
             "start", "--foreground", "--no-engine", "--socket", self.xend_sock,
             "--state-dir", self.state, "--engine-control", self.engine_sock,
             "--reconcile-interval", "0.5"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_for(lambda: self.xm("vnet-list").returncode == 0, timeout=20,
                 what="xend-vnet to answer")

    def stop_server(self):
        self.server.send_signal(signal.SIGTERM)
        assert self.server.wait(30) == 0

    def xm(self, *args, cwd=None):
        return subprocess.run(
            ["ip", "netns", "exec", self.ns, sys.executable, "-m",
             "xend_vnet.xm_commands.main", *args],
            env=self.env, cwd=cwd or self.dir, capture_output=True, text=True, timeout=60)

    def link(self, name):
        out = self.lab.ns_sh(self.ns, "ip", "-o", "link", "show", name, check=False)
        return out.stdout if out.returncode == 0 else None

    def close(self):
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            self.server.wait(30)


@pytest.fixture
def host():
    lab = Lab("xvt-")
    h = Host(lab)
    try:
        yield h
    finally:
        h.close()
        lab.close()


def vnet97_is_up(h: Host) -> bool:
    tap, bridge = h.link("vnif97"), h.link("vnet97")
    return bool(tap and bridge and "master vnet97" in tap and ",UP" in tap
                and ",UP" in bridge)


def test_xm_vnet_life_cycle_with_real_engine(host):
    h = host
    h.start_engine()
    h.start_server()
    configs = os.path.join(h.dir, "configs")
    os.makedirs(configs)
    with open(os.path.join(configs, "vnet97.sxp"), "w") as f:
        f.write("# vnet 97, as in Xen's examples\n" + VNET97)

    # A relative path, resolved in xm's working directory, not the server's.
    done = h.xm("vnet-create", "vnet97.sxp", cwd=configs)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert h.xm("vnet-list").stdout == "97\n"
    assert h.xm("vnet-list", "-l").stdout == VNET97
    assert vnet97_is_up(h)
    listed = h.engine.request("(vnet.list)")
    assert "(id 0000:0000:0000:0000:0000:0000:0000:0097) (vnetif vnif97)" in listed
    stored = os.path.join(h.state, "vnet", "0000-0000-0000-0000-0000-0000-0000-0097.sxp")
    assert os.path.exists(stored)

    # Duplicate create (any spelling of the id) and unknown delete are faults.
    dup = h.xm("vnet-create", os.path.join(configs, "vnet97.sxp"))
    assert dup.returncode == 1
    assert "Error: vnet 97 already exists" in dup.stderr
    unknown = h.xm("vnet-delete", "98")
    assert unknown.returncode == 1
    assert "Error: No such vnet 98" in unknown.stderr

    # Both daemons stop, the bridge goes; both come back in either order.
    for engine_first in (True, False):
        h.stop_server()
        h.stop_engine()
        assert h.link("vnif97"), "the TAP is persistent and survives the engine"
        h.lab.ns_sh(h.ns, "ip", "link", "del", "vnet97")
        assert h.link("vnet97") is None
        if engine_first:
            h.start_engine()
            h.start_server()
        else:
            h.start_server()
            h.start_engine()
        wait_for(lambda: vnet97_is_up(h), timeout=20,
                 what=f"vnet97 restored ({'engine' if engine_first else 'server'} first)")
        assert "(vnetif vnif97)" in h.engine.request("(vnet.list)")
        assert h.xm("vnet-list").stdout == "97\n"

    done = h.xm("vnet-delete", "97")
    assert done.returncode == 0, done.stderr
    assert h.link("vnet97") is None
    assert h.link("vnif97") is None
    assert not os.path.exists(stored)
    assert "vnif97" not in h.engine.request("(vnet.list)")
    assert h.xm("vnet-list").stdout == ""


def test_plain_xmlrpc_client_with_legacy_method_names(host):
    """What an unmodified xm sends: ServerProxy attribute calls over httpu."""
    h = host
    h.start_engine()
    h.start_server()

    def session():
        proxy = server_proxy(f"httpu://{h.xend_sock}")
        out = {"empty": proxy.xend_vnets()}
        proxy.xend_vnet_create(VNET97)
        out["ids"] = proxy.xend_vnets()
        out["config"] = proxy.xend_vnet("97")
        out["same"] = proxy.xend_vnet("0:0:0:0:0:0:0:97")
        try:
            proxy.xend_vnet("99")
        except xmlrpc.client.Fault as fault:
            out["fault"] = (fault.faultCode, fault.faultString)
        out["methods"] = proxy.system.listMethods()
        out["deleted"] = proxy.xend_vnet_delete("97")
        out["after"] = proxy.xend_vnets()
        return out

    from netns import call_in_netns
    out = call_in_netns(h.ns, session)
    assert out["empty"] == []
    assert out["ids"] == ["97"]
    assert out["config"] == ["vnet", ["id", "97"], ["bridge", "vnet97"],
                             ["vnetif", "vnif97"], ["security", "none"]]
    assert out["same"] == out["config"]
    assert out["fault"] == (2, "No such vnet 99")
    for name in ("xend_vnets", "xend_vnet", "xend_vnet_create", "xend_vnet_delete"):
        assert name in out["methods"]
    assert out["deleted"] is None
    assert out["after"] == []
