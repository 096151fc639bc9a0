"""Boot order with stored vnets (root).

A host boots with vnet 97 stored.  Engine and server start in either order;
the server says READY=1 (sd_notify, as ``Type=notify`` units want) and, in
the order the installed units impose (engine first), the bridge is up with
the engine's interface on it at that moment, so a domain attached right
after by a vif-bridge-style hotplug is on the vnet at once.  Started the
other way round, the server brings the vnet up as soon as the engine
answers.  The engine is started the way xend starts it: network-vnet (the
installed copy, under xend's minimal PATH).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest
from netns import REPO, Lab, sh, wait_for

from xend_vnet import install
from xend_vnet.config import VnetConfig
from xend_vnet import engine_launcher as launcher
from xend_vnet.store import VnetStore

pytestmark = pytest.mark.root

VNET97 = "(vnet (id 97) (bridge vnet97) (vnetif vnif97) (security none))"
VIF_BRIDGE = os.path.join(REPO, "demo", "vif-bridge")
MINIMAL_PATH = "/sbin:/usr/sbin:/bin:/usr/bin"


class BootingHost:
    def __init__(self, lab: Lab):
        self.lab = lab
        lab.underlay()
        self.ns = lab.host("h", "192.0.2.1")
        self.dir = lab.tmp
        self.engine_sock = os.path.join(self.dir, "vnetd.sock")
        self.xend_sock = os.path.join(self.dir, "xmlrpc.sock")
        self.state = os.path.join(self.dir, "state")
        self.scripts = os.path.join(self.dir, "scripts")
        os.makedirs(self.scripts)
        self.vn_path = install.find_tools().vn
        self.network_vnet = os.path.join(self.scripts, "network-vnet")
        with open(install.NETWORK_VNET_SOURCE, encoding="utf-8") as f:
            text = install.network_vnet_script(f.read(), self.vn_path)
        with open(self.network_vnet, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(self.network_vnet, 0o755)
        self.server: subprocess.Popen | None = None
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify_path = os.path.join(self.dir, "notify")
        self.notify.bind(self.notify_path)
        self.notify.settimeout(30)

    def start_engine(self) -> None:
        done = sh(["ip", "netns", "exec", self.ns, "env", "-i", f"PATH={MINIMAL_PATH}",
                   f"VNETD_SOCKET={self.engine_sock}", f"XEN_SCRIPT_DIR={self.scripts}",
                   self.network_vnet, "start", "no_default_vnets=yes"], check=False)
        assert done.returncode == 0, done.stderr

    def start_server(self) -> None:
        """xend-vnet as its unit runs it; returns once it said READY=1."""
        env = dict(os.environ, PYTHONPATH=REPO, NOTIFY_SOCKET=self.notify_path,
                   XEND_CONFIG=os.path.join(self.dir, "none.sxp"))
        log = open(os.path.join(self.dir, "xend-vnet.log"), "ab")
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, "-m", "xend_vnet.xmlrpc.cli",
             "start", "--foreground", "--no-engine", "--socket", self.xend_sock,
             "--state-dir", self.state, "--engine-control", self.engine_sock,
             "--reconcile-interval", "0.5"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        # The restore extends systemd's start timeout batch by batch; READY follows.
        while (message := self.notify.recv(100)) != b"READY=1":
            assert message.startswith(b"EXTEND_TIMEOUT_USEC="), message

    def link(self, name: str) -> str | None:
        out = self.lab.ns_sh(self.ns, "ip", "-o", "link", "show", name, check=False)
        return out.stdout if out.returncode == 0 else None

    def vnet97_up(self) -> bool:
        tap, bridge = self.link("vnif97"), self.link("vnet97")
        return bool(tap and bridge and "master vnet97" in tap and ",UP" in bridge)

    def attach_domain(self) -> str:
        """A domain whose vif is enslaved by the hotplug script, as Xen does it."""
        dom = self.lab.netns("dom1")
        sh(["ip", "link", "add", "eth0", "netns", dom, "type", "veth", "peer", "name",
            "vif1.0", "netns", self.ns])
        self.lab.ns_sh(dom, "ip", "link", "set", "eth0", "address", "aa:00:00:00:97:01")
        self.lab.ns_sh(dom, "ip", "addr", "add", "10.97.0.1/24", "dev", "eth0")
        self.lab.ns_sh(dom, "ip", "link", "set", "eth0", "up")
        self.lab.ns_sh(self.ns, VIF_BRIDGE, "online", "vif1.0", "vnet97")
        return dom

    def vn(self, *args: str) -> subprocess.CompletedProcess:
        return self.lab.ns_sh(self.ns, "env", f"VNETD_SOCKET={self.engine_sock}", self.vn_path,
                              *args, check=False)

    def close(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            self.server.wait(30)
        if launcher.running_pid(self.engine_sock) is not None:
            self.vn("rmmod", "--purge")
        self.notify.close()


@pytest.fixture
def host():
    lab = Lab("xv6-boot-")
    h = BootingHost(lab)
    try:
        VnetStore(h.state).save(VnetConfig.from_text(VNET97))
        yield h
    finally:
        h.close()
        lab.close()


def test_engine_then_server_bridge_is_up_when_the_server_is_ready(host):
    h = host
    h.start_engine()
    assert h.link("vnet97") is None
    h.start_server()
    # No waiting: READY=1 means the stored vnets are up (the units' order).
    assert h.vnet97_up(), h.link("vnif97")
    dom = h.attach_domain()
    assert "master vnet97" in h.link("vif1.0")
    # The engine learns the domain's MAC from its first frame (an ARP request).
    h.lab.ns_sh(dom, "ping", "-c", "1", "-W", "1", "10.97.0.9", check=False)
    wait_for(lambda: "aa:00:00:00:97:01" in h.vn("vifs").stdout, timeout=10,
             what="the engine to learn the domain's MAC")


def test_server_then_engine_vnets_come_up_once_the_engine_answers(host):
    h = host
    h.start_server()
    assert launcher.running_pid(h.engine_sock) is None
    # The bridge is there before the engine: a domain started now finds it.
    wait_for(lambda: h.link("vnet97"), timeout=10, what="bridge vnet97 without the engine")
    h.attach_domain()
    assert "master vnet97" in h.link("vif1.0")
    h.start_engine()
    wait_for(h.vnet97_up, timeout=20, what="vnet 97 restored once the engine runs")
    assert "master vnet97" in h.link("vif1.0")
    listed = h.vn("vnets").stdout
    assert "(id 0000:0000:0000:0000:0000:0000:0000:0097)" in listed
    assert "(vnetif vnif97)" in listed
