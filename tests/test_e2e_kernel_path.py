"""End to end (root): vnetd as the control plane of its kernel path
(datapath/kernel/path.py, design.md 1.1).

Four hosts on one LAN run vnetd on port 1800 (``--port``) with clear vnet
97 and secured vnet 98 from a startup file:

    h1 192.0.2.1   kernel path          d1 10.0.0.1, dm 10.0.0.9 (migrates to h2)
    h2 192.0.2.2   kernel path          d2 10.0.0.2
    h3 192.0.2.3   kernel path, --no-tap-offload    d3 10.0.0.3
    h4 192.0.2.4   a kernel object that is not there: user space   d4 10.0.0.4

Namespaces are named kc*.  The tests run in file order and share the
world; each says what it relies on.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time

import pytest
from e2e_helpers import ping, send_gratuitous_arp, tcp_transfer, vnet_stats
from netns import Lab, call_in_netns, is_root, wait_for

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not is_root(), reason="needs root and /dev/net/tun")]

V97 = "0000:0000:0000:0000:0000:0000:0000:0097"
PORT = "1800"
REQUIRE = "XEND_VNET_REQUIRE_KERNEL_PATH"
MISSING_OBJECT = "/nonexistent/vnet_shim.bpf.o"
HOSTS = {  # name: (address, extra vnetd args, kernel path required)
    "h1": ("192.0.2.1", [], True),
    "h2": ("192.0.2.2", [], True),
    "h3": ("192.0.2.3", ["--no-tap-offload"], True),
    "h4": ("192.0.2.4", ["--kernel-object", MISSING_OBJECT], False),
}
DOMAINS = {  # name: (host, address, MAC)
    "d1": ("h1", "10.0.0.1", "aa:00:00:00:00:01"),
    "d2": ("h2", "10.0.0.2", "aa:00:00:00:00:02"),
    "d3": ("h3", "10.0.0.3", "aa:00:00:00:00:03"),
    "d4": ("h4", "10.0.0.4", "aa:00:00:00:00:04"),
    "dm": ("h1", "10.0.0.9", "aa:00:00:00:00:09"),
}


@contextlib.contextmanager
def environment(name: str, value: str | None):
    old = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


class World:
    def __init__(self, lab: Lab):
        self.lab = lab
        self.ns: dict[str, str] = {}
        self.vnetd = {}
        self.files: dict[str, str] = {}
        key = os.path.join(lab.tmp, "v98.key")
        with open(os.open(key, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(bytes(range(32)).hex() + "\n")
        lab.underlay()
        for name, (addr, _args, _required) in HOSTS.items():
            ns = self.ns[name] = lab.host(name, addr)
            path = self.files[name] = os.path.join(lab.tmp, f"{name}.conf")
            with open(path, "w") as f:
                f.write("(vnet.add (id 97))\n"
                        f"(vnet.add (id 98) (security conf) (key-file {key}))\n")
            self.start(name)
            lab.bridge(ns, "vnet97", "vnif0097")
        for name, (host, addr, mac) in DOMAINS.items():
            self.ns[name] = lab.domain(name, self.ns[host], "vnet97", addr, mac=mac)

    def args(self, host: str) -> list[str]:
        return ["--no-default-vnets", "--port", PORT, "-f", self.files[host], *HOSTS[host][1]]

    def start(self, host: str, tag: str | None = None, control: str | None = None):
        d = self.vnetd[host] = self.lab.start_vnetd(
            self.ns[host], *self.args(host), name=tag, control=control,
            require_kernel_path=bool(HOSTS[host][2]))
        return d

    def stats(self, host: str) -> dict:
        return vnet_stats(self.vnetd[host])[V97]


@pytest.fixture(scope="module")
def world():
    from xend_vnet.kernel_shim.datapath.kernel.build import compile_object, object_path
    if not os.path.exists(object_path()):
        ok, why = compile_object()
        assert ok, f"the kernel path's object cannot be built: {why}"
    lab = Lab("kc")
    try:
        yield World(lab)
    finally:
        lab.close()


def k(stats: dict, name: str) -> int:
    return int(stats.get(f"kernel_{name}", 0))


def reach(world: World, domain: str, addr: str) -> None:
    """First contact: ARP through the flood (which the LAN's multicast may
    take a moment to carry at first), then the MACs are learned."""
    wait_for(lambda: ping(world.lab, world.ns[domain], addr, count=1)[0] == 0, timeout=20,
             what=f"{domain} to reach {addr}")


def vn_status(world: World, host: str) -> str:
    d = world.vnetd[host]
    return world.lab.ns_sh(world.ns[host], sys.executable, "-m", "xend_vnet.vn", "--control",
                           d.control, "status").stdout


def test_the_status_says_which_path_carries_each_vnet(world):
    for name, d in world.vnetd.items():
        wait_for(lambda d=d: d.status()["group-joined"] == "yes", timeout=10,
                 what=f"vnetd {name} to join its group")
    for name in ("h1", "h2", "h3"):
        text = vn_status(world, name)
        assert "    kernel-path loaded" in text, text
        assert re.search(r"^      vnif0097  kernel$", text, re.M), text
        assert re.search(r"^      vnif0098  user space: secured vnet$", text, re.M), text
    text = vn_status(world, "h4")
    reason = f"no compiled object: {MISSING_OBJECT}"
    assert f"    kernel-path 'unavailable: {reason}" in text, text
    assert re.search(rf"^      vnif0097  user space: {re.escape(reason)}", text, re.M), text


def test_ping_goes_kernel_to_kernel(world):
    lab = world.lab
    reach(world, "d1", "10.0.0.2")            # ARP through the flood, MACs learned
    before = {h: world.stats(h) for h in ("h1", "h2")}
    rc, seqs, out = ping(lab, world.ns["d1"], "10.0.0.2", count=20, interval=0.05)
    assert rc == 0 and seqs == list(range(1, 21)), out
    after = {h: world.stats(h) for h in ("h1", "h2")}
    for h in ("h1", "h2"):         # requests one way, replies the other
        assert k(after[h], "encapsulated") - k(before[h], "encapsulated") >= 20
        assert k(after[h], "decapsulated") - k(before[h], "decapsulated") >= 20
        assert int(after[h]["tx_packets"]) - int(before[h]["tx_packets"]) <= 2


def test_a_tcp_stream_runs_at_least_99_percent_in_the_kernel(world):
    """Super-frames between two engines whose kernel paths know each other
    (CAP_KERNEL) go whole; the counters say where every frame went."""
    lab = world.lab
    h1, h2 = world.vnetd["h1"], world.vnetd["h2"]
    wait_for(lambda: "kernel_to_user" in world.stats("h1"), what="kernel counters")
    before = {"h1": world.stats("h1"), "h2": world.stats("h2")}
    tcp_transfer(lab, world.ns["d1"], world.ns["d2"], "10.0.0.2", 40 << 20)
    after = {"h1": world.stats("h1"), "h2": world.stats("h2")}
    sent_k = k(after["h1"], "encapsulated") - k(before["h1"], "encapsulated")
    sent_u = int(after["h1"]["tx_packets"]) - int(before["h1"]["tx_packets"])
    got_k = k(after["h2"], "decapsulated") - k(before["h2"], "decapsulated")
    got_u = int(after["h2"]["rx_packets"]) - int(before["h2"]["rx_packets"])
    assert sent_k > 100 and got_k > 100
    assert sent_k / (sent_k + sent_u) >= 0.99, (sent_k, sent_u, after["h1"])
    assert got_k / (got_k + got_u) >= 0.99, (got_k, got_u, after["h2"])
    assert h1.alive() and h2.alive()


def test_a_host_without_tap_offloads_uses_the_kernel_path_too(world):
    lab = world.lab
    reach(world, "d3", "10.0.0.1")
    before = world.stats("h3")
    tcp_transfer(lab, world.ns["d3"], world.ns["d1"], "10.0.0.1", 8 << 20)
    after = world.stats("h3")
    sent_k = k(after, "encapsulated") - k(before, "encapsulated")
    sent_u = int(after["tx_packets"]) - int(before["tx_packets"])
    assert sent_k / (sent_k + sent_u) >= 0.99, (sent_k, sent_u, after)


def test_a_host_whose_kernel_path_cannot_load_still_carries_everything(world):
    lab = world.lab
    reach(world, "d4", "10.0.0.1")
    rc, seqs, out = ping(lab, world.ns["d4"], "10.0.0.1", count=10, interval=0.05)
    assert rc == 0 and seqs == list(range(1, 11)), out
    fast_before = int(vnet_stats(world.vnetd["h1"])["engine"]["tx_fast"])
    tcp_transfer(lab, world.ns["d1"], world.ns["d4"], "10.0.0.4", 4 << 20)
    assert "kernel_encapsulated" not in world.stats("h4")
    # h1's kernel leaves the super-frames to its user space (h4 does not
    # decapsulate in its kernel), which sends them as id-5 segments: h4's
    # engine takes them.
    assert int(world.stats("h1")["kernel_to_user"].get("partial_csum_to_legacy", 0)) > 0
    assert int(vnet_stats(world.vnetd["h1"])["engine"]["tx_fast"]) > fast_before


def test_a_required_kernel_path_that_cannot_load_stops_vnetd(world):
    lab = world.lab
    ns = lab.host("h5", "192.0.2.5")
    d = lab.start_vnetd(ns, "--no-default-vnets", "--port", PORT, "--kernel-object",
                        MISSING_OBJECT, wait=False, require_kernel_path=True)
    assert d.proc.wait(20) == 1
    log = d.log()
    assert f"the kernel path cannot load: no compiled object: {MISSING_OBJECT}" in log, log
    assert f"{REQUIRE}=1" in log and "--no-kernel-path" in log
    d = lab.start_vnetd(ns, "--no-default-vnets", "--port", PORT, "--no-kernel-path",
                        name="h5b", require_kernel_path=True)
    assert d.status()["kernel-path"] == "unavailable: --no-kernel-path"
    d.stop()


def test_a_migrated_domain_is_reached_within_a_second(world):
    """dm moves from h1 to h2 (both with the kernel path); d3 on h3 reaches
    it again within 1 s: the guest's gratuitous ARP makes h2 announce it,
    and h3's kernel map follows its VARP cache."""
    lab = world.lab
    mac = DOMAINS["dm"][2]
    reach(world, "d3", "10.0.0.9")
    lab.move_vif("dm", world.ns["h1"], world.ns["h2"], "vnet97")
    start = time.monotonic()
    call_in_netns(world.ns["dm"], send_gratuitous_arp, "eth0", mac, "10.0.0.9")
    rc, seqs, out = ping(lab, world.ns["d3"], "10.0.0.9", count=1, interval=0.05,
                         deadline=1)
    elapsed = time.monotonic() - start
    assert rc == 0 and seqs, out
    assert elapsed < 1.0, f"reachable again only after {elapsed:.2f} s"
    before = k(world.stats("h3"), "encapsulated")
    rc, seqs, out = ping(lab, world.ns["d3"], "10.0.0.9", count=10, interval=0.05)
    assert rc == 0 and seqs == list(range(1, 11)), out
    assert k(world.stats("h3"), "encapsulated") - before >= 10      # to h2, in the kernel


def tcp_ext(world: World, domain: str, name: str) -> int:
    lines = [ln.split() for ln in world.lab.ns_sh(world.ns[domain], "cat",
                                                  "/proc/net/netstat").stdout.splitlines()
             if ln.startswith("TcpExt:")]
    return int(dict(zip(lines[0][1:], lines[1][1:]))[name])


def fdb_port(world: World, host: str, mac: str) -> list[str]:
    """The ports host's bridge vnet97 has an fdb entry for ``mac`` on."""
    out = world.lab.ns_sh(world.ns[host], "bridge", "fdb", "show", "br", "vnet97").stdout
    return [ln.split()[2] for ln in out.splitlines() if ln.startswith(mac + " ")]


def kernel_port_index(world: World, host: str) -> int:
    out = world.lab.ns_sh(world.ns[host], "ip", "-o", "link", "show", "vkp0097").stdout
    return int(out.split(":", 1)[0])


def across(world: World, gap, port: int, count: int = 1000) -> tuple[str, dict, int]:
    """A 100/s ping (``count`` requests) and a TCP stream from d1 to d2 while
    ``gap()`` runs; the ping's output, iperf3's report and the stream's
    retransmission timeouts."""
    lab = world.lab
    # Static neighbours: ARP goes through user space, and a neighbour that
    # turns stale while the engine is away is another story than the data path's.
    for here, there in (("d1", "d2"), ("d2", "d1")):
        lab.ns_sh(world.ns[here], "ip", "neigh", "replace", DOMAINS[there][1], "lladdr",
                  DOMAINS[there][2], "dev", "eth0", "nud", "permanent")
    timeouts = tcp_ext(world, "d1", "TCPTimeouts")
    server = lab.spawn(world.ns["d2"], "iperf3", "-s", "-1", "-p", str(port),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    pinger = lab.spawn(world.ns["d1"], "ping", "-n", "-q", "-c", str(count), "-i", "0.01",
                       "-W", "1", "10.0.0.2", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True)
    stream = lab.spawn(world.ns["d1"], "iperf3", "-c", "10.0.0.2", "-p", str(port), "-t",
                       str(count // 100), "-b", "20M", "-i", "0.5", "-J",
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        time.sleep(1.0)
        gap()
        out, _ = pinger.communicate(timeout=60)
        report, _ = stream.communicate(timeout=60)
    finally:
        for proc in (pinger, stream, server):
            if proc.poll() is None:
                proc.kill()
    return out, json.loads(report), tcp_ext(world, "d1", "TCPTimeouts") - timeouts


def packets(out: str) -> tuple[int, int]:
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))


def check_stream(report: dict, timeouts: int) -> None:
    """Data in every half second, and no retransmission timeout (a probe or
    a fast retransmit on this busy machine is no lost connectivity)."""
    intervals = [iv["sum"]["bytes"] for iv in report["intervals"]]
    assert len(intervals) >= 15 and all(n > 0 for n in intervals), intervals
    assert timeouts == 0, report["end"]["sum_sent"]


def engine_gap(world: World, tag: str, stop) -> dict:
    """h1's engine ends (``stop(engine)``) and another starts, 2.5 s later;
    what is checked while none runs."""
    seen = {}
    old = world.vnetd["h1"]
    lab, ns = world.lab, world.ns["h1"]
    d2 = DOMAINS["d2"][2]
    seen["port"] = kernel_port_index(world, "h1")

    def gap():
        stop(old)
        seen["tap"] = lab.ns_sh(ns, "ip", "link", "show", "vnif0097").stdout
        seen["fdb"] = fdb_port(world, "h1", d2)
        seen["before"] = k(vnet_stats(world.vnetd["h2"])[V97], "decapsulated")
        time.sleep(2.5)
        seen["during"] = k(vnet_stats(world.vnetd["h2"])[V97], "decapsulated")
        world.start("h1", tag=tag, control=old.control)
    seen["out"], seen["report"], seen["timeouts"] = across(world, gap, 5201 + len(tag))
    seen["old"] = old
    return seen


def check_restart(world: World, seen: dict) -> None:
    """What the next engine found and kept: the programs, maps and kernel
    port it adopted, d2's fdb entry on that port, the vnet on the kernel path."""
    assert "NO-CARRIER" in seen["tap"], seen["tap"]                # no TAP while no engine
    assert seen["fdb"] == ["vkp0097"], seen["fdb"]
    assert seen["during"] - seen["before"] >= 100                  # h1's requests, in h2's kernel
    new = world.vnetd["h1"]
    assert new.status()["kernel-path"] == "loaded, adopted from the previous engine"
    assert re.search(r"^      vnif0097  kernel$", vn_status(world, "h1"), re.M)
    assert kernel_port_index(world, "h1") == seen["port"]          # taken over, not made again
    assert fdb_port(world, "h1", DOMAINS["d2"][2]) == ["vkp0097"]
    sent, received = packets(seen["out"])
    assert sent == 1000 and received == sent, seen["out"]
    check_stream(seen["report"], seen["timeouts"])
    rc, seqs, out = ping(world.lab, world.ns["d1"], "10.0.0.2", count=3)
    assert rc == 0 and seqs == [1, 2, 3], out


def test_an_engine_restart_under_a_100_per_second_ping_loses_nothing(world):
    """The programs, maps and kernel port stay while no engine runs (close),
    the next engine adopts them: the known unicast needs neither the TAP,
    which has no carrier meanwhile, nor an engine (docs/kernel-path.md 4)."""
    seen = engine_gap(world, "h1b", lambda d: d.stop() == 0 or pytest.fail(d.log()))
    assert "kernel path left in place for the next engine" in seen["old"].log()
    check_restart(world, seen)


def test_a_killed_engine_loses_no_known_unicast_either(world):
    """kill -9: nothing of the kernel path needed the engine, nor a last
    refresh from it; the next engine adopts what the killed one left."""
    def kill(d):
        d.proc.kill()
        assert d.proc.wait(10) == -9
    seen = engine_gap(world, "h1c", kill)
    assert "vnetd stopped" not in seen["old"].log()
    check_restart(world, seen)


def test_insmod_and_rmmod_purge(world):
    """vn insmod passes vnetd's options (the kernel path's ones too); vn rmmod
    --purge deletes every vnet, then what the kernel path left in the kernel."""
    lab, ns = world.lab, world.ns["h3"]
    old = world.vnetd["h3"]
    assert old.stop() == 0
    vn = [sys.executable, "-m", "xend_vnet.vn", "--control", old.control]
    with environment(REQUIRE, "1"):
        lab.ns_sh(ns, *vn, "insmod", "--no-default-vnets", "--no-tap-offload",
                  f"port={PORT}", "--file", world.files["h3"])
    text = lab.ns_sh(ns, *vn, "status").stdout
    assert re.search(r"^      vnif0097  kernel$", text, re.M), text
    filters = lab.ns_sh(ns, "tc", "filter", "show", "dev", "eth0", "ingress").stdout
    assert "xend-vnet" in filters
    lab.ns_sh(ns, *vn, "rmmod", "--purge")
    filters = lab.ns_sh(ns, "tc", "filter", "show", "dev", "eth0", "ingress").stdout
    assert "xend-vnet" not in filters
    assert "clsact" not in lab.ns_sh(ns, "tc", "qdisc", "show", "dev", "eth0").stdout
    assert lab.ns_sh(ns, "ip", "link", "show", "vnif0097", check=False).returncode != 0
    assert lab.ns_sh(ns, "ip", "link", "show", "vkp0097", check=False).returncode != 0
