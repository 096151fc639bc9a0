"""The engine's control socket through a real vnetd (design.md 5-6, protocol.md 8).

Every command, good and malformed (each malformed request gets one
``(err ...)`` reply and the daemon keeps serving), callers from another
network namespace refused, oversized and stuck requests, the startup file
and its SIGHUP reconciliation, --daemon, and the control path rules.
Root: each engine runs in its own namespace (prefix ``xve-ctl-``).
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest
from fake_engine import err
from netns import REPO, Lab, call_in_netns, is_root, sh, wait_for

from xend_vnet import sxp
from xend_vnet.engine_client import EngineClient

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not is_root(), reason="needs root and /dev/net/tun")]

V = "0000:0000:0000:0000:0000:0000:0000:"


@pytest.fixture(scope="module")
def lab():
    lab = Lab("xve-ctl-")
    try:
        lab.underlay()
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="module")
def host(lab):
    ns = lab.host("h", "192.0.2.10")
    d = lab.start_vnetd(ns)
    return lab, ns, d


def error(d, text: str) -> tuple:
    """(errno, message) of the one (err ...) form the request must get."""
    return err(d.request(text))


def link(lab, ns, ifname):
    p = lab.ns_sh(ns, "ip", "-d", "-o", "link", "show", ifname, check=False)
    return p.stdout if p.returncode == 0 else None


def vnet_ids(d) -> list:
    return [sxp.child_value(f, "id") for f in d.call(["vnet.list"])]


# -- vnets -------------------------------------------------------------------------

def test_default_vnets_and_socket_mode(host):
    lab, ns, d = host
    assert vnet_ids(d) == [V + "0002", V + "0003", V + "0004"]
    for n in (2, 3, 4):
        info = link(lab, ns, f"vnif000{n}")
        assert info and "tun type tap" in info and "UP" in info, info
    assert stat.S_IMODE(os.stat(d.control).st_mode) == 0o600
    with open(d.control + ".pid") as f:
        assert int(f.read()) == d.pid
    with open(f"/proc/{d.pid}/limits") as f:
        (files,) = [ln.split()[3:5] for ln in f if ln.startswith("Max open files")]
    assert files[0] == files[1]          # soft limit raised to the hard limit


def test_vnet_add_list_del(host):
    lab, ns, d = host
    assert d.request("(vnet.add (id 97))") == ""
    info = link(lab, ns, "vnif0097")
    assert "tun type tap" in info and "mtu 1500" in info and "persist on" in info, info
    assert "(vnet (id 0000:0000:0000:0000:0000:0000:0000:0097) (vnetif vnif0097) " \
           "(security none) (data-path vnetd) (header 64))" in d.request("(vnet.list)")
    # Unknown children ignored, any order (protocol.md 8.2), as xend sends them.
    assert d.request("(vnet.add (bridge vnet98) (vnetif myvnif98) (id 0098))") == ""
    assert link(lab, ns, "myvnif98")
    assert error(d, "(vnet.add (id 97))")[0] == 17
    assert error(d, "(vnet.add (id 0:0:0:0:0:0:0:97))")[0] == 17
    assert d.request("(vnet.del (id 97))") == ""
    assert link(lab, ns, "vnif0097") is None
    assert error(d, "(vnet.del (id 97))")[0] == 2
    assert d.request("(vnet.del 98)") == ""          # xend's shape (protocol.md 8.4)
    assert link(lab, ns, "myvnif98") is None
    assert vnet_ids(d) == [V + "0002", V + "0003", V + "0004"]


def test_vnet_add_refusals(host):
    lab, ns, d = host
    assert error(d, "(vnet.add (id 1))")[0] == 17
    assert error(d, "(vnet.add (id 0))")[0] == 22
    assert error(d, "(vnet.add (id 1:2))")[0] == 22
    assert error(d, "(vnet.add (id 12345))")[0] == 22
    errno_, message = error(d, "(vnet.add (id 99) (security conf))")
    assert errno_ == 22 and "vn key-gen" in message
    assert error(d, "(vnet.add (id 99) (security maybe))")[0] == 22
    assert error(d, "(vnet.add (id 99) (vnetif abcdefghijklmnop))")[0] == 22
    # A name held by another vnet, or by a device that is no TAP (design.md 4).
    errno_, message = error(d, "(vnet.add (id 99) (vnetif vnif0002))")
    assert errno_ == 17 and "0002" in message
    errno_, message = error(d, "(vnet.add (id 99) (vnetif eth0))")
    assert errno_ == 17 and "not a TAP" in message, message
    assert link(lab, ns, "eth0")
    assert V + "0099" not in vnet_ids(d)


def test_existing_tap_reattached(host):
    lab, ns, d = host
    lab.ns_sh(ns, "ip", "tuntap", "add", "mode", "tap", "vnif00a0")
    assert d.request("(vnet.add (id a0))") == ""
    assert "UP" in link(lab, ns, "vnif00a0")
    # Attached by this vnet: a second open would get EBUSY.
    assert d.request("(vnet.del (id a0))") == ""


# -- vifs, peers, varp -----------------------------------------------------------------

def test_vif_commands(host):
    _lab, _ns, d = host
    assert d.request("(vif.add (vnet 2) (vmac aa:bb:cc:dd:ee:01))") == ""
    assert d.request("(vif.add (vmac AA-BB-CC-DD-EE-02) (vnet 0:0:0:0:0:0:0:2))") == ""
    listing = d.request("(vif.list)")
    assert listing.startswith("(viftable\n")
    assert "(vmac aa:bb:cc:dd:ee:01)" in listing and "(vmac aa:bb:cc:dd:ee:02)" in listing
    assert f"(vnet {V}0002)" in listing
    assert error(d, "(vif.add (vnet 77) (vmac aa:bb:cc:dd:ee:01))")[0] == 2
    assert error(d, "(vif.add (vnet 2) (vmac aa:bb:cc:dd:ee))")[0] == 22
    assert error(d, "(vif.add (vnet 2))")[0] == 22
    assert d.request("(vif.del (vnet 2) (vmac aa:bb:cc:dd:ee:01))") == ""
    assert error(d, "(vif.del (vnet 2) (vmac aa:bb:cc:dd:ee:01))")[0] == 2
    assert "aa:bb:cc:dd:ee:01" not in d.request("(vif.list)")


def test_peer_commands(host):
    _lab, _ns, d = host
    assert d.request("(peer.add (addr 192.0.2.50) (port 1798))") == ""
    assert d.request("(peer.add (addr 192.0.2.51))") == ""
    listing = d.request("(peer.list)")
    assert "192.0.2.50" in listing and "192.0.2.51" in listing
    assert error(d, "(peer.add (addr 192.0.2))")[0] == 22
    assert error(d, "(peer.add (addr 224.10.0.1))")[0] == 22
    assert error(d, "(peer.add (addr 192.0.2.52) (port 70000))")[0] == 22
    assert d.request("(peer.del (addr 192.0.2.50))") == ""
    assert d.request("(peer.del (addr 192.0.2.51))") == ""
    assert error(d, "(peer.del (addr 192.0.2.50))")[0] == 2
    assert "192.0.2.5" not in d.request("(peer.list)")


def test_varp_commands(host):
    _lab, _ns, d = host
    listing = d.request("(varp.list)")
    assert listing.startswith("(varp \n (device eth0)\n (mcast_addr 224.10.0.1)\n"
                              " (ucast_addr 192.0.2.10)\n (port 1798)\n"), listing
    assert d.request("(varp.flush)") == ""
    printed = d.request("(varp.print)")
    assert "(vnet (id" in printed and "(varp " in printed
    assert d.request("(varp.mcaddr (addr 224.10.0.9))") == ""
    wait_for(lambda: d.status()["group-joined"] == "yes", what="the new group joined")
    assert d.status()["mcaddr"] == "224.10.0.9"
    assert error(d, "(varp.mcaddr (addr 192.0.2.1))")[0] == 22
    assert error(d, "(varp.mcaddr (addr 224.10.0.1) (ttl 0))")[0] == 22
    assert d.request("(varp.mcaddr (addr 224.10.0.1) (ttl 1))") == ""
    assert d.status()["mcaddr"] == "224.10.0.1"


def test_stats_and_status(host):
    _lab, _ns, d = host
    forms = d.call(["vnet.stats"])
    assert forms[0][0] == "engine_stats"
    assert [sxp.child_value(f, "vnet") for f in forms[1:]] == [V + "0002", V + "0003",
                                                               V + "0004"]
    (one,) = d.call(["vnet.stats", ["id", "3"]])
    assert sxp.child_value(one, "vnet") == V + "0003"
    assert error(d, "(vnet.stats (id 77))")[0] == 2
    status = d.status()
    assert status["pid"] == str(d.pid)
    assert status["group-joined"] == "yes"
    assert status["port"] == "1798"
    assert status["address"] == "192.0.2.10"
    assert status["vnets"] == "3"
    assert int(status["rcvbuf"]) >= 4 * 1024 * 1024


# -- malformed and hostile requests ----------------------------------------------------------

MALFORMED = [
    "(", ")", "(vnet.add", "(vnet.add (id 5)", "(unknown.command)", "vnet.list", "42",
    "((vnet.list))", "(vnet.add)", "(vnet.add (id))", "(vnet.add (id zz))",
    "(vnet.add (id (5)))", "(vnet.del)", "(vnet.del (id 1234567))", "(vif.add)",
    "(vif.add (vnet 2) (vmac))", "(vif.del (vnet 2) (vmac zz:zz:zz:zz:zz:zz))",
    "(peer.add)", "(peer.add (addr 1.2.3.4.5))", "(peer.del (addr x))", "(varp.mcaddr)",
    "(varp.mcaddr (addr 224.1.1.1) (ttl x))", '"(vnet.list)"', "(vnet.list) (bogus)",
    "(vnet.add (id 5) (vnetif 'a b'))", "(vnet.add (id 5) (vnetif a/b))",
    "\x00\x01\x02\xff", "(" * 3000 + ")" * 3000, "(vnet.add (id 5) (key-file relative))",
]


@pytest.mark.parametrize("text", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_request_gets_err_and_daemon_serves(host, text):
    _lab, _ns, d = host
    error(d, text)
    assert d.status()["vnets"] == "3"


def test_empty_request_answers_nothing(host):
    assert host[2].request("") == ""


def _raw_exchange(path: str, data: bytes, hold: float = 0.0) -> bytes:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(path)
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass
    if hold:
        time.sleep(hold)
    else:
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    chunks = []
    while True:
        try:
            b = s.recv(65536)
        except ConnectionResetError:
            break
        if not b:
            break
        chunks.append(b)
    s.close()
    return b"".join(chunks)


def test_oversized_request_refused(host):
    _lab, ns, d = host
    reply = call_in_netns(ns, _raw_exchange, d.control, b"(vnet.list " + b"x" * (2 << 20))
    assert reply.startswith(b"(err (errno 7)"), reply[:200]
    assert d.status()["vnets"] == "3"


def _stuck_then_quick(path: str) -> tuple:
    """A client that never half-closes, and meanwhile a normal one."""
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stuck.connect(path)
    stuck.sendall(b"(vnet.li")
    started = time.monotonic()
    quick = EngineClient(path, timeout=3).request("(vnet.list)")
    quick_time = time.monotonic() - started
    stuck.settimeout(20)
    reply = stuck.recv(65536)
    stuck.close()
    return quick, quick_time, reply, time.monotonic() - started


def test_stuck_client_does_not_block_others(host):
    _lab, ns, d = host
    quick, quick_time, reply, stuck_time = call_in_netns(ns, _stuck_then_quick, d.control)
    assert "vnif0002" in quick and quick_time < 2
    assert reply.startswith(b"(err (errno 110)"), reply
    assert 4 < stuck_time < 15


def test_foreign_namespace_caller_refused(lab, host):
    _lab, _ns, d = host
    other = lab.netns("other")
    for caller in (other, None):
        if caller is None:
            reply = EngineClient(d.control).request("(vnet.add (id 55))")   # the test's own ns
        else:
            reply = call_in_netns(caller, lambda: EngineClient(d.control).request(
                "(vnet.add (id 55))"))
        form = sxp.parse_one(reply)
        assert form[0] == "err" and sxp.child_value(form, "errno") == "1", reply
        assert "another network namespace" in sxp.child_value(form, "message")
    assert V + "0055" not in vnet_ids(d)


# -- startup file, SIGHUP, daemon mode, paths ---------------------------------------------------

def test_startup_file_and_sighup_reconcile(lab):
    ns = lab.host("f", "192.0.2.11")
    path = os.path.join(lab.tmp, "f.conf")
    with open(path, "w") as f:
        f.write("(vnet.add (id 10))\n(vnet.add (id 11) (vnetif v11))\n"
                "(peer.add (addr 192.0.2.60))\n(varp.mcaddr (addr 224.10.0.7) (ttl 2))\n"
                "(vif.add (vnet 10) (vmac aa:00:00:00:00:01))\n")
    d = lab.start_vnetd(ns, "--no-default-vnets", "-f", path)
    assert vnet_ids(d) == [V + "0010", V + "0011"]
    assert "192.0.2.60" in d.request("(peer.list)")
    assert d.status()["mcaddr"] == "224.10.0.7"
    assert d.status()["mcast-ttl"] == "2"
    assert "only vnet.add, peer.add, varp.mcaddr are accepted" in d.log()
    assert d.request("(vnet.add (id 12))") == ""          # not the file's: kept
    assert d.request("(peer.add (addr 192.0.2.61))") == ""
    with open(path, "w") as f:
        f.write("(vnet.add (id 11) (vnetif v11))\n(vnet.add (id 13))\n")
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: vnet_ids(d) == [V + "0011", V + "0012", V + "0013"],
             what="the reload to reconcile")
    peers = d.request("(peer.list)")
    assert "192.0.2.60" not in peers and "192.0.2.61" in peers
    assert link(lab, ns, "vnif0010") is None
    with open(path, "w") as f:
        f.write("(vnet.add (id 11)")                       # unreadable: nothing changes
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "nothing changed" in d.log(), what="the bad reload to be logged")
    assert vnet_ids(d) == [V + "0011", V + "0012", V + "0013"]
    assert d.stop() == 0


def test_bad_startup_file_is_fatal(lab):
    ns = lab.host("g", "192.0.2.12")
    d = lab.start_vnetd(ns, "-f", os.path.join(lab.tmp, "missing.conf"), wait=False)
    assert d.proc.wait(20) == 1
    assert "vnetd: cannot read" in d.log()


def test_daemon_mode_returns_once_serving(lab):
    ns = lab.host("m", "192.0.2.13")
    control = os.path.join(lab.tmp, "sub", "dir", "m.sock")
    log_file = os.path.join(lab.tmp, "m.log")
    p = sh(["ip", "netns", "exec", ns, sys.executable, "-m", "xend_vnet.kernel_shim.daemon",
            "--daemon", "--control", control, "--log-file", log_file,
            "--no-default-vnets"], timeout=30, check=False)
    assert p.returncode == 0, p.stderr
    with open(control + ".pid") as f:
        pid = int(f.read())
    try:
        reply = call_in_netns(ns, lambda: EngineClient(control).request("(engine.status)"))
        assert f"(pid {pid})" in reply
        assert os.getsid(pid) not in (os.getsid(0), 0)   # detached: a session of its own
        # A second start in the same namespace fails, and says why.
        p = sh(["ip", "netns", "exec", ns, sys.executable, "-m",
                "xend_vnet.kernel_shim.daemon", "--daemon", "--control", control + "2"],
               timeout=30, check=False)
        assert p.returncode == 1
        assert "another vnetd is already running in this network namespace" in p.stderr
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not os.path.exists(control), what="the daemon to remove its socket")
    with open(log_file) as f:
        assert "vnetd stopped" in f.read()


def test_control_path_in_use_or_not_a_socket(lab):
    ns = lab.host("p", "192.0.2.14")
    path = os.path.join(lab.tmp, "p.sock")
    # A live socket at the path is never taken over.
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(path)
    live.listen(1)
    d = lab.start_vnetd(ns, control=path, name="p1", wait=False)
    assert d.proc.wait(20) == 1
    assert "in use by a running engine" in d.log()
    live.close()
    # A stale one (nobody listening) is replaced.
    d = lab.start_vnetd(ns, "--no-default-vnets", control=path, name="p2")
    assert d.stop() == 0
    # A regular file is left alone.
    with open(path, "w") as f:
        f.write("not a socket")
    d = lab.start_vnetd(ns, control=path, name="p3", wait=False)
    assert d.proc.wait(20) == 1
    assert "is not a socket" in d.log()
    with open(path) as f:
        assert f.read() == "not a socket"


def test_starts_without_network_and_joins_later(lab):
    ns = lab.netns("n")                       # only lo: the group cannot be joined
    d = lab.start_vnetd(ns, "--no-default-vnets")
    status = d.status()
    assert status["group-joined"] == "no" and status["address"] == ""
    assert "cannot join VARP group 224.10.0.1 yet" in d.log()
    lab.connect(ns, "192.0.2.15")
    wait_for(lambda: d.status()["group-joined"] == "yes", timeout=5,
             what="the group joined once the network is up")
    wait_for(lambda: d.status()["address"] == "192.0.2.15", timeout=8,
             what="the care-of address picked up")
    # The device goes away (and the membership with it), then comes back.
    lab.ns_sh(ns, "ip", "link", "del", "eth0")
    wait_for(lambda: d.status()["group-joined"] == "no", timeout=8,
             what="the lost membership noticed")
    lab.connect(ns, "192.0.2.15")
    wait_for(lambda: d.status()["group-joined"] == "yes", timeout=5, what="the group rejoined")
    assert "lost VARP group 224.10.0.1" in d.log()
    assert d.stop() == 0


def test_address_and_device_options(lab):
    ns = lab.host("q", "192.0.2.16")
    d = lab.start_vnetd(ns, "--no-default-vnets", "--device", "eth0",
                        "--address", "203.0.113.5", "--port", "1799", "--mtu", "1400")
    listing = d.request("(varp.list)")
    assert " (device eth0)\n" in listing and " (ucast_addr 203.0.113.5)\n" in listing
    assert " (port 1799)\n" in listing
    assert d.request("(vnet.add (id 5))") == ""
    assert "mtu 1400" in link(lab, ns, "vnif0005")
    assert d.stop() == 0


def test_version_and_bad_options():
    env = dict(os.environ, PYTHONPATH=REPO)
    run = [sys.executable, "-m", "xend_vnet.kernel_shim.daemon"]
    p = subprocess.run([*run, "-v"], capture_output=True, text=True, env=env, check=False)
    assert p.returncode == 0 and p.stdout.startswith("vnetd 1.0 (xend-vnet ")
    for bad in (["--port", "0"], ["--mcaddr", "banana"], ["--mtu", "20"],
                ["--varp-ttl", "-1"], ["--mcast-ttl", "300"]):
        p = subprocess.run([*run, *bad], capture_output=True, text=True, env=env, check=False)
        assert p.returncode == 2 and "invalid" in p.stderr, (bad, p.stderr)
