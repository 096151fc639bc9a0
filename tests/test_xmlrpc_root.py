"""xend-vnet with real bridges (root): the server runs in a network namespace of
its own, against the fake engine, which creates a TAP per vnet like vnetd.

The end-to-end test with the real engine is tests/test_e2e_management.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid

import pytest
from fake_engine import FakeEngine
from netns import wait_for
from vnet_server_harness import run_xm


pytestmark = pytest.mark.root
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VNET97 = "(vnet (id 97) (bridge vnet97) (vnetif vnif97) (security none))"
C97 = "0000:0000:0000:0000:0000:0000:0000:0097"


def ip(ns, *args, check=True):
    return subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True, check=check)


def link(ns, name):
    done = ip(ns, "-j", "-d", "link", "show", name, check=False)
    return json.loads(done.stdout)[0] if done.returncode == 0 else None


class Lab:
    def __init__(self):
        self.ns = f"xvm-srv-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        self.dir = tempfile.mkdtemp(prefix="xvm-")
        self.sock = os.path.join(self.dir, "xmlrpc.sock")
        # The server runs in another namespace than the engine: let it in.
        self.engine = FakeEngine(os.path.join(self.dir, "vnetd.sock"), on_add=self.add_tap,
                                 on_del=self.del_tap, allow_foreign_netns=True).start()
        self.proc = None

    def add_tap(self, name):
        ip(self.ns, "tuntap", "add", "dev", name, "mode", "tap")

    def del_tap(self, name):
        ip(self.ns, "link", "del", name, check=False)

    def start(self):
        argv = ["ip", "netns", "exec", self.ns, sys.executable, "-m", "xend_vnet.xmlrpc.cli",
                "start", "--foreground", "--socket", self.sock, "--no-engine",
                "--state-dir", os.path.join(self.dir, "state"), "--reconcile-interval", "0.3",
                "--engine-control", self.engine.path]
        env = dict(os.environ, PYTHONPATH=ROOT, XEND_CONFIG=os.path.join(self.dir, "none"))
        self.proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: os.path.exists(self.sock + ".pid") or self.proc.poll() is not None,
                 timeout=20.0, what="the server's pid file")
        assert self.proc.poll() is None, self.proc.stderr.read()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        self.proc = None

    def close(self):
        self.stop()
        self.engine.close()
        subprocess.run(["ip", "netns", "del", self.ns], check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def lab(monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("needs root and network namespaces")
    lab = Lab()
    monkeypatch.setenv("XM_SERVER", f"httpu://{lab.sock}")
    try:
        lab.start()
        yield lab
    finally:
        lab.close()


def test_create_restore_delete_with_real_bridges(lab, capsys, tmp_path, monkeypatch):
    (tmp_path / "vnet97.sxp").write_text(VNET97 + "\n")
    monkeypatch.chdir(tmp_path)
    assert run_xm(capsys, "vnet-create", "vnet97.sxp") == (0, "", "")
    assert run_xm(capsys, "vnet-list") == (0, "97\n", "")
    assert run_xm(capsys, "vnet-list", "-l") == (0, VNET97 + "\n", "")
    bridge = link(lab.ns, "vnet97")
    assert bridge["linkinfo"]["info_kind"] == "bridge" and "UP" in bridge["flags"]
    assert bridge["linkinfo"]["info_data"]["stp_state"] == 0
    tap = link(lab.ns, "vnif97")
    assert tap["master"] == "vnet97" and "UP" in tap["flags"]
    code, _, err = run_xm(capsys, "vnet-create", "vnet97.sxp")
    assert (code, err) == (1, "Error: vnet 97 already exists\n")
    code, _, err = run_xm(capsys, "vnet-delete", "98")
    assert (code, err) == (1, "Error: No such vnet 98\n")

    # Engine restart: the engine forgets the vnet, the TAP is gone; the loop restores.
    lab.engine.restart()
    lab.del_tap("vnif97")
    wait_for(lambda: (link(lab.ns, "vnif97") or {}).get("master") == "vnet97", timeout=20.0,
             what="vnif97 on vnet97")
    assert lab.engine.vnets == {C97: ("vnif97", "none")}

    # Server restart after the bridge was deleted: restored at start.
    lab.stop()
    ip(lab.ns, "link", "del", "vnet97")
    lab.start()
    wait_for(lambda: (link(lab.ns, "vnif97") or {}).get("master") == "vnet97", timeout=20.0,
             what="vnif97 on vnet97")

    # A domain vif on the bridge blocks delete unless forced.
    ip(lab.ns, "link", "add", "vif1.0", "type", "veth", "peer", "name", "vif1.0p")
    ip(lab.ns, "link", "set", "vif1.0", "master", "vnet97")
    code, _, err = run_xm(capsys, "vnet-delete", "97")
    assert code == 1 and "vif1.0" in err
    assert run_xm(capsys, "vnet-delete", "--force", "97") == (0, "", "")
    assert link(lab.ns, "vnet97") is None and link(lab.ns, "vnif97") is None
    assert lab.engine.vnets == {}
    assert os.listdir(os.path.join(lab.dir, "state", "vnet")) == []
    assert run_xm(capsys, "vnet-list") == (0, "", "")


def test_create_refuses_a_non_bridge_name(lab, capsys, tmp_path):
    ip(lab.ns, "link", "add", "vnet98", "type", "veth", "peer", "name", "vnet98p")
    conf = tmp_path / "v.sxp"
    conf.write_text("(vnet (id 98))")
    code, _, err = run_xm(capsys, "vnet-create", str(conf))
    assert code == 1 and "vnet98" in err and "not a bridge" in err
    assert lab.engine.vnets == {} and link(lab.ns, "vnif0098") is None
