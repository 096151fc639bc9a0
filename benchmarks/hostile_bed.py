"""The test bed of benchmarks/hostile.py: namespaces, engines, an attacker,
and the proof that nothing leaves.

Namespaces ``xhb-*``: a LAN (a bridge in ``xhb-lan``, multicast snooping
off), hosts ``xhb-h1`` (198.51.100.1) and ``xhb-h2`` (198.51.100.2) with
one vnetd each, domains ``xhb-d1`` (10.99.0.1) and ``xhb-d2`` (10.99.0.2)
on vnet 99's bridge of their host, the attacker ``xhb-atk``
(198.51.100.3) on the LAN, and the domain-side injector: a TAP with
IFF_VNET_HDR (``inj0``) on host 1's vnet bridge.  Forged traffic uses no
address of this machine's own network.

Isolation is checked, not assumed (``isolation_problems``): no namespace of
ours has a default route, and every veth of ours leads to another
namespace of ours.  A capture in the caller's namespace (``LeakWatch``)
counts every packet there with an address the benchmark uses; it proves
itself alive with a canary datagram on loopback at the start and the end.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
# The test bed's plumbing and the lock every benchmark shares (one at a time
# owns the machine): throughput.py's.
from throughput import LOCK_PATH, BenchError, in_ns, rcvbuf_errors, sh, take_lock  # noqa: E402
from throughput import wait_for as _wait_for  # noqa: E402


def wait_for(what: str, test, timeout: float = 15.0) -> None:
    """throughput.py's wait, with the longer default this bed's engines need."""
    _wait_for(what, test, timeout)


REPO = os.path.dirname(HERE)
PREFIX = "xhb-"
LAN, H1, H2, ATK, D1, D2 = (PREFIX + n for n in ("lan", "h1", "h2", "atk", "d1", "d2"))
HOSTS = {H1: "198.51.100.1", H2: "198.51.100.2", ATK: "198.51.100.3"}
DOMAINS = {D1: (H1, "10.99.0.1"), D2: (H2, "10.99.0.2")}
MEASURED, SECURED, PEER = "99", "9a", "203.0.113.7"
TAP, BRIDGE, INJECTOR = "vnif0099", "br99", "inj0"
# What a leak would carry: the LAN, TEST-NET-3, the domains' and forged 10.x.
LEAK_FILTER = ("net 198.51.100.0/24 or net 203.0.113.0/24 or net 10.99.0.0/24 "
               "or net 10.200.0.0/13")
SENDER = os.path.join(HERE, "hostile_sender.py")


def remove_namespaces() -> None:
    """Delete this benchmark's namespaces (links inside them go with them)."""
    for line in sh("ip", "netns", "list", check=False).stdout.split("\n"):
        name = line.split(" ")[0]
        if name.startswith(PREFIX):
            sh("ip", "netns", "del", name, check=False)


class LeakWatch:
    """tcpdump in the caller's namespace (the way out of the bed), counting
    packets that carry the bed's addresses; a loopback canary proves it live."""

    def __init__(self, workdir: str):
        self.port = random.randint(20000, 60000)
        self.path = os.path.join(workdir, "leaks.txt")
        self.proc: subprocess.Popen | None = None

    def start(self, started: list) -> None:
        flt = f"({LEAK_FILTER}) or (udp and dst host 127.0.0.1 and dst port {self.port})"
        with open(self.path, "w") as out:
            self.proc = subprocess.Popen(["tcpdump", "-i", "any", "-nn", "-l", "-p", "-q", flt],
                                         stdout=out, stderr=subprocess.DEVNULL,
                                         stdin=subprocess.DEVNULL)
        started.append(self.proc)
        self._canary(1)

    def _canary(self, n: int) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            deadline = time.monotonic() + 10
            while self._lines()[0] < n:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise BenchError("the leak capture (tcpdump -i any) does not see "
                                     "its loopback canary")
                s.sendto(b"canary", ("127.0.0.1", self.port))
                time.sleep(0.3)

    def _lines(self) -> tuple[int, list[str]]:
        with open(self.path) as f:
            lines = [ln for ln in f.read().split("\n") if ln.strip()]
        canary = [ln for ln in lines if f"127.0.0.1.{self.port}" in ln]
        return len(canary), [ln for ln in lines if ln not in canary]

    def stop(self) -> list[str]:
        """The leaked packets' lines; the canary is seen once more first."""
        if self.proc is None:
            return []
        self._canary(self._lines()[0] + 1)
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(10)
        return self._lines()[1]


def isolation_problems(made: list[str]) -> list[str]:
    """Why the bed could reach outside, if it could: a default route in a
    namespace of ours, or a veth whose peer is in a namespace not ours."""
    problems = []
    for ns in made:
        for family in ("-4", "-6"):
            if sh("ip", "-n", ns, family, "route", "show", "default").stdout.strip():
                problems.append(f"{ns} has a default route ({family})")
        ids = {e["nsid"]: e.get("name") for e in
               json.loads(sh("ip", "-n", ns, "-j", "netns", "list-id").stdout or "[]")}
        for link in json.loads(sh("ip", "-n", ns, "-j", "-d", "link", "show").stdout):
            kind = link.get("linkinfo", {}).get("info_kind")
            if kind not in (None, "bridge", "tun", "veth"):
                problems.append(f"{ns}: {link['ifname']} is a {kind}, not expected here")
            nsid = link.get("link_netnsid")
            if nsid is not None and ids.get(nsid) not in made:
                problems.append(f"{ns}: {link['ifname']} leads to namespace "
                                f"{ids.get(nsid) or f'id {nsid} (unnamed)'}, not ours")
    return problems


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def host_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs (/proc/stat)."""
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


class HostileBed:
    """Namespaces, engines and processes of one run; ``cleanup`` removes them."""

    def __init__(self):
        self.workdir = tempfile.mkdtemp(prefix=PREFIX)
        self.procs: list[subprocess.Popen] = []
        self.engines: dict[str, subprocess.Popen] = {}
        self.made: list[str] = []
        self.lock_fd: int | None = None
        self.key_file = os.path.join(self.workdir, "vnet.key")
        self.leaks = LeakWatch(self.workdir)
        self.env = dict(os.environ, PYTHONPATH=REPO)
        self.env.pop("VNETD_SOCKET", None)

    # -- set-up ------------------------------------------------------------------------

    def lock(self) -> None:
        self.lock_fd = take_lock(LOCK_PATH, "another benchmark is running; try again "
                                 "when it is done")

    def build(self) -> None:
        self.lock()
        remove_namespaces()               # leftovers of an interrupted run of ours
        for ns in (LAN, *HOSTS, *DOMAINS):
            self._netns(ns)
        sh("ip", "-n", LAN, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        sh("ip", "-n", LAN, "link", "set", "br0", "up")
        for host, addr in HOSTS.items():
            self._on_lan(host, addr)
        for dom, (host, addr) in DOMAINS.items():
            self._domain(dom, host, addr)
        sh("ip", "-n", H1, "tuntap", "add", "dev", INJECTOR, "mode", "tap", "vnet_hdr")
        sh("ip", "-n", H1, "link", "set", INJECTOR, "master", BRIDGE, "up")
        fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, os.urandom(32).hex().encode() + b"\n")
        os.close(fd)
        problems = isolation_problems(self.made)
        if problems:
            raise BenchError("the test bed is not isolated: " + "; ".join(problems))
        self.leaks.start(self.procs)
        self.start(in_ns(D2, "iperf3", "-s"), "iperf3-server")

    def _netns(self, ns: str) -> None:
        sh("ip", "netns", "add", ns)
        self.made.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        for key in ("all", "default"):
            sh(*in_ns(ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1"))
            # VFWD comes from a peer off the LAN, with no route back (protocol.md 7).
            sh(*in_ns(ns, "sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0"))

    def _on_lan(self, ns: str, addr: str) -> None:
        port = "v-" + ns[len(PREFIX):]
        sh("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port,
           "netns", LAN)
        sh("ip", "-n", LAN, "link", "set", port, "master", "br0", "up")
        sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        # design.md 11: multicast between namespaces needs the route.
        sh("ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")

    def _domain(self, dom: str, host: str, addr: str) -> None:
        if sh("ip", "-n", host, "link", "show", BRIDGE, check=False).returncode != 0:
            sh("ip", "-n", host, "link", "add", BRIDGE, "type", "bridge", "stp_state", "0",
               "forward_delay", "0")
            sh("ip", "-n", host, "link", "set", BRIDGE, "up")
        vif = "vif-" + dom[len(PREFIX):]
        sh("ip", "link", "add", vif, "netns", host, "type", "veth", "peer", "name", "eth0",
           "netns", dom)
        sh("ip", "-n", host, "link", "set", vif, "master", BRIDGE, "up")
        sh("ip", "-n", dom, "addr", "add", f"{addr}/24", "dev", "eth0")
        sh("ip", "-n", dom, "link", "set", "eth0", "up")

    # -- engines -------------------------------------------------------------------------

    def start_engines(self, tag: str, peer: bool = False) -> None:
        """Both vnetd, fresh, with the default vnets 2, 3 and 4, vnet 99 and the
        auth vnet 9a, and with ``peer`` a peer off the LAN (protocol.md 7:
        every group datagram is then also relayed to it); their vnet 99 TAPs
        on the bridges."""
        for host in (H1, H2):
            control = os.path.join(self.workdir, f"{host}.sock")
            startup = os.path.join(self.workdir, f"{host}.conf")
            with open(startup, "w") as f:
                f.write(f"(vnet.add (id {MEASURED}))\n"
                        f"(vnet.add (id {SECURED}) (security auth) (key-file {self.key_file}))\n"
                        + (f"(peer.add (addr {PEER}))\n" if peer else ""))
            self.engines[host] = self.start(
                in_ns(host, sys.executable, "-m", "xend_vnet.kernel_shim.daemon",
                      "--control", control, "-f", startup, "--device", "eth0",
                      "--epoch-file", control + ".epoch",
                      "--log-file", os.path.join(self.workdir, f"{host}-{tag}.log")),
                f"vnetd-{host}-{tag}")
        for host in (H1, H2):
            wait_for(f"vnetd in {host}", lambda h=host: self.ask(h, "(engine.status)",
                                                                 check=False))
            wait_for(f"{TAP} in {host}", lambda h=host: sh(
                "ip", "-n", h, "link", "show", TAP, check=False).returncode == 0)
            sh("ip", "-n", host, "link", "set", TAP, "master", BRIDGE, "up")
        sh(*in_ns(D1, "ping", "-c", "3", "-i", "0.2", "-W", "2", DOMAINS[D2][1]), check=False)

    def stop_engines(self) -> None:
        for p in self.engines.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.engines.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.engines.clear()

    def engine_pid(self, host: str) -> int:
        """The engine's own pid (``ip netns exec`` execs it; checked, not assumed)."""
        pid = self.engines[host].pid
        proc = psutil.Process(pid)
        if proc.name() == "ip":
            pid = proc.children()[0].pid
        return pid

    def ask(self, host: str, request: str, check: bool = True) -> str:
        control = os.path.join(self.workdir, f"{host}.sock")
        done = subprocess.run(in_ns(host, sys.executable, SENDER, "ask", "--control", control,
                                    "--request", request),
                              capture_output=True, text=True, env=self.env, timeout=60)
        if done.returncode != 0:
            if check:
                raise BenchError(f"{request} in {host}: {done.stderr.strip()[-300:]}")
            return ""
        return done.stdout

    def rcvbuf_errors(self) -> int:
        """UDP receive-buffer drops so far, both hosts together (/proc/net/snmp)."""
        return rcvbuf_errors((H1, H2))

    # -- processes -----------------------------------------------------------------------

    def start(self, argv: list[str], name: str) -> subprocess.Popen:
        with open(os.path.join(self.workdir, f"{name}.out"), "w") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                    env=self.env)
        self.procs.append(proc)
        time.sleep(0.2)
        if proc.poll() is not None:
            with open(os.path.join(self.workdir, f"{name}.out")) as f:
                raise BenchError(f"{name} exited at start: {f.read().strip()[-500:]}")
        return proc

    def sender_argv(self, ns: str, *args: str) -> list[str]:
        return in_ns(ns, sys.executable, SENDER, *args)

    def stop(self, procs: list[subprocess.Popen], timeout: float = 15) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    # -- tear-down -----------------------------------------------------------------------

    def finish(self) -> tuple[list[str], list[str]]:
        """(leaked packets, isolation problems), checked before anything is removed."""
        problems = isolation_problems(self.made)
        return self.leaks.stop(), problems

    def cleanup(self) -> None:
        """Only what this run started and made; never another run's namespaces."""
        self.stop(list(reversed(self.procs)), timeout=10)
        self.procs.clear()
        self.engines.clear()
        if self.lock_fd is not None:
            for ns in reversed(self.made):
                sh("ip", "netns", "del", ns, check=False)
            self.made.clear()
            os.close(self.lock_fd)
            self.lock_fd = None
        shutil.rmtree(self.workdir, ignore_errors=True)
