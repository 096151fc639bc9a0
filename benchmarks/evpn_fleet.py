#!/usr/bin/env python3
"""A fleet on the EVPN control plane (docs/fleet.md): convergence, reach,
memory, idle CPU and a migration under ping.

The bed (tests/frr_lab.py): ``--subnets`` subnets joined by one router that
routes unicast only (no multicast routing, and no peers configured
anywhere), two route reflectors (on the first subnet and on the middle
one), ``--hosts`` hosts spread evenly over the subnets.  Every node runs
real FRR (zebra, bgpd) configured by ``xend-vnet evpn-config``; every host
runs xend-vnet with ``--vnets`` vxlan vnets in its store, as after a
reboot: xend-vnet launches vnetd with the EVPN options of its
xend-config.sxp and restores them, so the VXLAN devices and bridges are
made the product's way.  Each host has one domain MAC per vnet: in the
``--sample`` sampled vnets a domain namespace on every host (a veth on the
bridge that announces itself), in the others a veth port of the bridge
with the MAC as a static bridge entry (what the bridge holds for a domain,
without 3,000 namespaces).

Measured:

* convergence: from the moment the last FRR instance has its
  configuration until every host's kernel FDB holds, for every vnet, a
  flood entry for each other host and each other host's domain MAC toward
  that host.  Each host's table is read through netlink in its namespace
  once its forwarding-entry notifications have been quiet for 3 s, until
  complete; its convergence time is that of its last change, seen on a
  socket subscribed to those notifications (read every 0.1 s), so the
  tables are not dumped while FRR is still working;
* reach: in each sampled vnet every domain sends broadcast pings; each
  must be answered by every other domain (floods along the flood lists,
  replies by unicast across subnets);
* per-host memory (RSS of zebra + bgpd + vnetd, psutil) and their CPU
  over ``--idle`` quiet seconds, and the reflectors' zebra + bgpd;
* migrations: a sampled domain moved to a host of another subnet while a
  domain of a third subnet pings it 100 times a second: the longest time
  without replies (target: at most 1 s).

Everything it makes (namespaces ``evb*``, processes) is removed on exit,
also on failure or Ctrl-C.  Root only.  On a 2-core machine the default
(32 hosts x 100 vnets) takes a few minutes.

    python3 benchmarks/evpn_fleet.py [--hosts 32] [--subnets 4] [--vnets 100]
        [--sample 4] [--idle 30] [--migrations 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from e2e_helpers import send_gratuitous_arp  # noqa: E402
from frr_lab import EvpnLab, host_xend_config, reflector_xend_config, vnet_config  # noqa: E402
from netns import call_in_netns, socket_in_netns, wait_for  # noqa: E402

from xend_vnet.config import VnetConfig  # noqa: E402
from xend_vnet.kernel_shim.datapath.vxlan.device import read_fdb  # noqa: E402
from xend_vnet.store import VnetStore  # noqa: E402

PREFIX = "evb"
RESULTS = os.path.join(REPO, "benchmarks", "results")
LOCK_PATH = os.path.join(tempfile.gettempdir(), "xend-vnet-evpn-fleet.lock")
FIRST_VNET = 0x1000
SAMPLE_NET = "10.88"          # sampled vnet k: 10.88.k.0/24, host i at .i+1
PING_RATE = 0.01              # seconds between the migration pinger's requests
DRAIN = 0.1                   # seconds between readings of the hosts' notifications
QUIET = 3.0                   # a host's table is checked once quiet this long
RTMGRP_NEIGH = 0x4
PING_BATCH = 2                # broadcast pings at once (each floods to every host)
# xend-vnet's reconcile interval.  Each round reads every link of its host
# (0.13 s of CPU with 500 links); on real hosts each has its own CPUs, here
# 32 of them at once would stall the 2 cores every round.
RECONCILE = 600


# -- the plan (pure) ------------------------------------------------------------------

@dataclass(frozen=True)
class HostPlan:
    index: int
    name: str
    subnet: int        # index into the lab's subnets
    last: int          # last octet of its address


@dataclass(frozen=True)
class Plan:
    hosts: tuple[HostPlan, ...]
    subnets: int
    vnets: tuple[int, ...]
    sample: tuple[int, ...]          # the sampled vnets (with domain namespaces)
    reflectors: tuple[tuple[str, int, int], ...]   # (name, subnet, last)

    def host_of(self, name: str) -> HostPlan:
        return next(h for h in self.hosts if h.name == name)


def plan(hosts: int, subnets: int, vnets: int, sample: int) -> Plan:
    """Hosts spread evenly over the subnets (host i on subnet i mod M, so
    neighbours in index order sit on different subnets), vnet ids from 0x1000,
    the first ``sample`` vnets sampled, reflectors on subnets 0 and M // 2."""
    if subnets < 2 or hosts < max(3, subnets) or not 1 <= sample <= vnets:
        raise ValueError("need 2 or more subnets, 3 or more hosts and at least one per "
                         "subnet, and 1 to --vnets sampled vnets")
    if vnets > 0xEFFF or hosts > 240:
        raise ValueError("at most 61439 vnets and 240 hosts")
    per_subnet = [0] * subnets
    out = []
    for i in range(hosts):
        s = i % subnets
        out.append(HostPlan(i, f"h{i}", s, 11 + per_subnet[s]))
        per_subnet[s] += 1
    ids = tuple(FIRST_VNET + k for k in range(vnets))
    rr = (("rr1", 0, 1), ("rr2", subnets // 2, 2 if subnets // 2 == 0 else 1))
    return Plan(tuple(out), subnets, ids, ids[:sample], rr)


def migration_plan(p: Plan, m: int) -> tuple[int, int, int, int]:
    """The ``m``-th migration: (sampled vnet index, domain's host, its new host,
    the pinging domain's host), from the last hosts backwards, each to a host
    of another subnet, pinged from a third subnet when there is one."""
    n = len(p.hosts)
    src = (n - 1 - m) % n
    dst = next(h.index for h in p.hosts
               if h.subnet != p.hosts[src].subnet and h.index != src)
    third = [h.index for h in p.hosts if h.subnet not in (p.hosts[src].subnet,
                                                          p.hosts[dst].subnet)]
    rest = [h.index for h in p.hosts if h.index not in (src, dst)]
    return m % len(p.sample), src, dst, (third or rest)[0]


def domain_mac(host: int, vnet: int) -> str:
    """The MAC of host ``host``'s domain on ``vnet``: locally administered, unique."""
    return f"02:eb:{host:02x}:{vnet >> 8:02x}:{vnet & 0xFF:02x}:01"


def domain_ip(sample_index: int, host: int) -> str:
    return f"{SAMPLE_NET}.{sample_index}.{host + 1}"


def missing(views: dict[int, object], addresses: dict[int, str], me: int) -> int:
    """How many expected entries host ``me``'s kernel lacks: ``views`` maps each
    vnet to its device's table (``device.DeviceFdb``, None when absent),
    ``addresses`` each host index to its address."""
    lacking = 0
    others = {h: a for h, a in addresses.items() if h != me}
    for vnet, fdb in views.items():
        if fdb is None:
            lacking += 2 * len(others)
            continue
        flood = set(fdb.flood)
        for h, addr in others.items():
            if addr not in flood:
                lacking += 1
            if fdb.remote.get(domain_mac(h, vnet)) != addr:
                lacking += 1
    return lacking


def is_bridge_entry(data: bytes) -> bool:
    """Whether a netlink notification is about a bridge forwarding entry
    (RTM_NEWNEIGH or RTM_DELNEIGH, family AF_BRIDGE)."""
    return (len(data) >= 17 and int.from_bytes(data[4:6], sys.byteorder) in (28, 29)
            and data[16] == socket.AF_BRIDGE)


def cpu_used(before: dict[str, dict[str, float]],
             after: dict[str, dict[str, float]]) -> dict[str, float]:
    """CPU seconds spent between two readings, summed by role and daemon:
    ``reflector bgpd``, ``host zebra``... (names of reflectors start with rr)."""
    out: dict[str, float] = {}
    for node, daemons in after.items():
        role = "reflector" if node.startswith("rr") else "host"
        for d, seconds in daemons.items():
            key = f"{role} {d}"
            out[key] = out.get(key, 0.0) + seconds - before.get(node, {}).get(d, 0.0)
    return out


def reply_times(output: str) -> list[float]:
    """The times of the replies in ``ping -D`` output."""
    return [float(t) for t in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from", output, re.M)]


def max_gap(times: list[float], start: float | None = None, end: float | None = None) -> float:
    """The longest time without a reply, the run's edges included when given."""
    points = sorted(times)
    if start is not None:
        points = [start] + points
    if end is not None:
        points = points + [end]
    if len(points) < 2:
        return float("inf")
    return max(b - a for a, b in zip(points, points[1:]))


def responders(output: str) -> set[str]:
    """The addresses that answered a ``ping -b``."""
    return set(re.findall(r"bytes from (\d+\.\d+\.\d+\.\d+)", output))


def spread(values: Iterable[float]) -> dict[str, float]:
    v = sorted(values)
    if not v:
        return {}
    return {"min": v[0], "median": statistics.median(v), "mean": statistics.fmean(v),
            "max": v[-1]}


def report(r: dict) -> str:
    """The results as text (benchmarks/results and docs/performance.md)."""
    mem, cpu = r["host_rss_mib"], r["host_idle_cpu_pct"]
    lines = [
        f"EVPN fleet: {r['hosts']} hosts on {r['subnets']} subnets, {r['vnets']} vnets each "
        f"({r['hosts'] * r['vnets']} VXLAN devices), 2 reflectors, FRR {r['frr']}",
        f"machine: {r['machine']['nproc']} cores, {r['machine']['cpu']}, "
        f"kernel {r['machine']['kernel']}",
        f"devices made (xend-vnet restore, all hosts at once): {r['restore_s']:.1f} s",
        f"FRR started on all nodes: {r['frr_start_s']:.1f} s from the first to the last",
        f"convergence from the last FRR start: {r['convergence_s']:.1f} s "
        f"(the last change of the last host, to {r['poll_round_s']:.1f} s; each host's last "
        f"change: first {r['host_converged_s']['min']:.1f} s, median "
        f"{r['host_converged_s']['median']:.1f} s)",
        f"  per host at the end: {r['flood_entries_per_host']} flood entries, "
        f"{r['remote_macs_per_host']} remote MACs",
        "  CPU seconds spent meanwhile: " + ", ".join(
            f"{k} {v:.1f}" for k, v in sorted(r.get("convergence_cpu_s", {}).items())
            if k.split()[1] in ("zebra", "bgpd", "vnetd")),
        f"reach: {r['ping_ok']}/{r['ping_sent']} domains heard every other domain of their "
        f"vnet answer their broadcast pings ({len(r['sample_vnets'])} vnets x {r['hosts']} "
        f"domains, 5 s each, {PING_BATCH} at once); {r['ping_ok_second_pass']}/"
        f"{r['ping_sent']} after a second try of the others; "
        f"{r['softnet_drops_during_pings']} packets dropped by the machine's input queues "
        "meanwhile",
        f"per host, zebra + bgpd + vnetd RSS: median {mem['median']:.1f} MiB, max "
        f"{mem['max']:.1f} MiB (zebra {r['rss_parts_mib']['zebra']:.1f}, bgpd "
        f"{r['rss_parts_mib']['bgpd']:.1f}, vnetd {r['rss_parts_mib']['vnetd']:.1f} median); "
        f"xend-vnet {r['rss_parts_mib']['xend-vnet']:.1f} MiB beside",
        f"idle CPU over {r['idle_s']:.0f} s, per host (zebra + bgpd + vnetd): median "
        f"{cpu['median']:.2f} %, max {cpu['max']:.2f} % of one core "
        f"(vnetd {r['cpu_parts_pct']['vnetd']:.2f} %, zebra {r['cpu_parts_pct']['zebra']:.2f} %,"
        f" bgpd {r['cpu_parts_pct']['bgpd']:.2f} % median)",
        f"reflectors (zebra + bgpd): RSS {r['reflector_rss_mib']['max']:.1f} MiB, idle CPU "
        f"{r['reflector_idle_cpu_pct']['max']:.2f} % (the busier)",
    ]
    for m in r["migrations"]:
        lines.append(f"migration {m['domain']} {m['from']} -> {m['to']} (subnet "
                     f"{m['from_subnet']} -> {m['to_subnet']}), pinged from {m['pinger']} at "
                     f"100/s: longest without replies {m['gap_s']:.2f} s, "
                     f"{m['replies']}/{m['sent']} replies")
    verdict = ("PASS" if r["converged"] and r["ping_ok_second_pass"] == r["ping_sent"]
               and all(m["gap_s"] <= 1.0 for m in r["migrations"]) else "FAIL")
    lines.append(f"verdict: {verdict} (full convergence, every domain reached, every "
                 "migration back within 1 s)")
    return "\n".join(lines) + "\n"


# -- the bed (root) ---------------------------------------------------------------------

class Fleet:
    """The lab, its hosts' devices and domains, and what it measured."""

    def __init__(self, p: Plan, log=print):
        self.p = p
        self.log = log
        self.evpn = EvpnLab(PREFIX, p.subnets)
        self.lab = self.evpn.lab
        self.hosts = {}
        self.reflectors = []
        self.sockets: dict[int, socket.socket] = {}
        self.indexes: dict[int, dict[int, int]] = {}     # host: {device index: vnet}
        self.masters: dict[int, dict[int, int]] = {}     # host: {device index: bridge}
        self.domains: dict[tuple[int, int], str] = {}    # (sample k, host): namespace
        self.watches: dict[int, socket.socket] = {}      # host: notifications

    def address(self, h: HostPlan) -> str:
        return f"{self.evpn.subnets[h.subnet]}.{h.last}"

    def build(self) -> float:
        """Namespaces, FRR configuration, stored vnets; xend-vnet started on every
        host at once.  Returns the seconds until every host's devices were up."""
        subnets = self.evpn.subnets
        for name, s, last in self.p.reflectors:
            self.reflectors.append(self.evpn.reflector(name, subnets[s], last))
        rr = [r.address for r in self.reflectors]
        for r in self.reflectors:
            r.write_config(reflector_xend_config(r.address, self.evpn.listen_ranges(), rr))
        for h in self.p.hosts:
            node = self.evpn.host(h.name, subnets[h.subnet], h.last)
            node.write_config(host_xend_config(node.address, rr))
            store = VnetStore(node.state)
            for v in self.p.vnets:
                store.save(VnetConfig.from_text(vnet_config(v)))
            self.hosts[h.index] = node
        self.log(f"{len(self.hosts)} hosts and {len(self.reflectors)} reflectors set up; "
                 "starting xend-vnet everywhere")
        started = time.monotonic()
        for node in self.hosts.values():
            node.start_server(interval=RECONCILE, wait=False)
        for node in self.hosts.values():
            node.wait_server(timeout=900)
        for i, node in self.hosts.items():
            self._wait_devices(i, node)
        return time.monotonic() - started

    def _wait_devices(self, i: int, node) -> None:
        want = {f"vnif{v:04x}": v for v in self.p.vnets}

        def devices():
            found = call_in_netns(node.ns, _links, list(want))
            return found if len(found) == len(want) and all(m for _, m in found.values()) \
                else None
        found = wait_for(devices, timeout=600, interval=1.0,
                         what=f"the {len(want)} devices of {node.name} on their bridges")
        self.indexes[i] = {index: want[name] for name, (index, _) in found.items()}
        self.masters[i] = {index: master for index, master in found.values()}
        self.sockets[i] = socket_in_netns(node.ns, socket.AF_NETLINK, socket.SOCK_RAW)

    def add_domains(self) -> None:
        """A static domain MAC per host and unsampled vnet, a domain namespace per
        host and sampled vnet (which announces itself)."""
        for i, node in self.hosts.items():
            links, fdb = [], []
            for v in self.p.vnets[len(self.p.sample):]:
                port = f"dm{v:x}"      # a veth: this kernel may lack the dummy driver
                links += [f"link add {port} type veth peer name {port}p",
                          f"link set {port}p up", f"link set {port} master vnet{v:x} up"]
                fdb.append(f"fdb add {domain_mac(i, v)} dev {port} master static")
            self.lab.ns_sh(node.ns, "ip", "-batch", "-", input="\n".join(links) + "\n")
            self.lab.ns_sh(node.ns, "bridge", "-batch", "-", input="\n".join(fdb) + "\n")
            for k, v in enumerate(self.p.sample):
                ns = self.lab.domain(f"d{k}h{i}", node.ns, f"vnet{v:x}", domain_ip(k, i),
                                     mac=domain_mac(i, v), mtu=1450)
                # answer broadcast pings; learn the others' MACs from their
                # announcements, so 31 replies need no 31 ARP floods back
                self.lab.ns_sh(ns, "sysctl", "-qw", "net.ipv4.icmp_echo_ignore_broadcasts=0",
                               "net.ipv4.conf.all.arp_accept=1",
                               "net.ipv4.conf.eth0.arp_accept=1")
                self.domains[(k, i)] = ns
        self.log(f"domains: {len(self.domains)} namespaces, "
                 f"{len(self.hosts) * (len(self.p.vnets) - len(self.p.sample))} static MACs")

    def announce(self) -> None:
        """Every sampled domain sends a gratuitous ARP (its bridge learns its MAC
        again: learnt MACs age out after 300 s)."""
        for (k, i), ns in self.domains.items():
            v = self.p.sample[k]
            call_in_netns(ns, send_gratuitous_arp, "eth0", domain_mac(i, v), domain_ip(k, i))

    def start_frr(self) -> tuple[float, float]:
        """Every node's FRR: configuration written, daemons started, then every
        configuration applied at once.  Returns (first start, last applied)."""
        nodes = [*self.reflectors, *self.hosts.values()]
        for n in nodes:
            n.evpn_config()
        first = time.monotonic()
        for n in nodes:
            n.start_frr(configure=False, wait=False)
        for n in nodes:
            for d in ("zebra", "bgpd"):
                wait_for(lambda n=n, d=d: os.path.exists(os.path.join(n.rundir, f"{d}.vty")),
                         timeout=120, interval=0.05, what=f"{d} of {n.name}")
        threads = [threading.Thread(target=n.apply_config) for n in nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return first, time.monotonic()

    def views(self, i: int) -> dict[int, object]:
        fdb = read_fdb(self.masters[i], self.sockets[i])
        return {self.indexes[i][index]: view for index, view in fdb.items()}

    def watch(self) -> None:
        """A socket per host subscribed to its forwarding-entry notifications,
        opened before FRR starts: the time of each host's last change, to the
        draining interval, without dumping tables while FRR works."""
        for i, node in self.hosts.items():
            sock = socket_in_netns(node.ns, socket.AF_NETLINK, socket.SOCK_RAW)
            sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)      # SO_RCVBUFFORCE
            sock.bind((0, RTMGRP_NEIGH))
            sock.setblocking(False)
            self.watches[i] = sock

    def _drain(self, last: dict[int, float]) -> bool:
        """Read every host's notifications; note when a bridge entry changed.
        False when a socket overflowed (some changes were not seen)."""
        whole = True
        for i, sock in self.watches.items():
            while True:
                try:
                    data = sock.recv(1 << 16)
                except BlockingIOError:
                    break
                except OSError:         # ENOBUFS: lost notifications
                    whole = False
                    last[i] = time.monotonic()
                    continue
                if is_bridge_entry(data):
                    last[i] = time.monotonic()
        return whole

    def converge(self, since: float, timeout: float) -> tuple[bool, dict[int, float], float]:
        """Until every host's table is complete (checked by a dump once its
        notifications have been quiet for QUIET seconds): (all complete, each
        host's time of its last change, the precision in seconds)."""
        addresses = {i: n.address for i, n in self.hosts.items()}
        last: dict[int, float] = {}
        complete: set[int] = set()
        deadline = since + timeout
        whole = True
        shown = 0.0
        while len(complete) < len(self.hosts) and time.monotonic() < deadline:
            time.sleep(DRAIN)
            whole &= self._drain(last)
            now = time.monotonic()
            quiet = [i for i in self.hosts
                     if i not in complete and now - last.get(i, since) >= QUIET]
            for i in quiet:
                if missing(self.views(i), addresses, i) == 0:
                    complete.add(i)
                self._drain(last)     # what arrived meanwhile is not lost
            if now - shown >= 10:
                self.log(f"  {now - since:6.1f} s: {len(complete)}/{len(self.hosts)} hosts "
                         f"complete, {len(last)} changing")
                shown = now
        if not whole:
            self.log("  notifications were lost: the times are those of the losses")
        times = {i: last.get(i, since) - since for i in complete}
        return len(complete) == len(self.hosts), times, DRAIN

    def counts(self, i: int) -> tuple[int, int]:
        views = self.views(i)
        return (sum(len(v.flood) for v in views.values() if v),
                sum(len(v.remote) for v in views.values() if v))

    def reach(self, domains: list[tuple[int, int]]) -> dict[tuple[int, int], str | None]:
        """Broadcast pings from each of ``domains`` ((sample k, host)): for each,
        None when every other domain of its vnet answered, else what was missing."""
        out: dict[tuple[int, int], str | None] = {}
        for start in range(0, len(domains), PING_BATCH):
            batch = []
            for k, i in domains[start:start + PING_BATCH]:
                # -w alone: with -b, -c stops at the count of replies, duplicates
                # included in some versions of ping
                cmd = ["ip", "netns", "exec", self.domains[(k, i)], "ping", "-n", "-b", "-i",
                       "0.4", "-w", "5", f"{SAMPLE_NET}.{k}.255"]
                batch.append(((k, i), subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                                       stderr=subprocess.STDOUT, text=True)))
            for (k, i), proc in batch:
                text, _ = proc.communicate(timeout=60)
                lacking = {domain_ip(k, h) for h in self.hosts if h != i} - responders(text)
                summary = next((line for line in text.splitlines() if "transmitted" in line), "")
                out[(k, i)] = (f"no reply from {len(lacking)} ({', '.join(sorted(lacking)[:4])}"
                               f"{', ...' if len(lacking) > 4 else ''}); {summary}"
                               if lacking else None)
        return out

    def pids(self, node) -> dict[str, int]:
        out = {}
        for d in ("zebra", "bgpd"):
            with open(os.path.join(node.rundir, f"{d}.pid")) as f:
                out[d] = int(f.read())
        if hasattr(node, "engine_pid"):
            out["vnetd"] = node.engine_pid()
            out["xend-vnet"] = node.server.pid
        return out

    def cpu_seconds(self) -> dict[str, dict[str, float]]:
        """Each node's daemons' CPU time so far (user + system)."""
        import psutil
        out = {}
        for n in [*self.reflectors, *self.hosts.values()]:
            out[n.name] = {}
            for k, pid in self.pids(n).items():
                try:
                    out[n.name][k] = sum(psutil.Process(pid).cpu_times()[:2])
                except psutil.Error:
                    out[n.name][k] = 0.0
        return out

    def resources(self, idle: float) -> dict:
        import psutil
        procs = {n.name: {k: psutil.Process(pid) for k, pid in self.pids(n).items()}
                 for n in [*self.reflectors, *self.hosts.values()]}
        before = {n: {k: sum(p.cpu_times()[:2]) for k, p in ps.items()} for n, ps in procs.items()}
        time.sleep(idle)
        out = {}
        for n, ps in procs.items():
            out[n] = {k: {"rss_mib": p.memory_info().rss / 2**20,
                          "cpu_pct": 100 * (sum(p.cpu_times()[:2]) - before[n][k]) / idle}
                      for k, p in ps.items()}
        return out

    def migrate(self, k: int, src: int, dst: int, pinger: int) -> dict:
        """Move sampled domain (k, src) to host ``dst`` under a 100/s ping from
        domain (k, pinger)."""
        v = self.p.sample[k]
        target = domain_ip(k, src)
        proc = subprocess.Popen(["ip", "netns", "exec", self.domains[(k, pinger)], "ping",
                                 "-n", "-D", "-i", str(PING_RATE), "-w", "6", target],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(2)
        name = f"d{k}h{src}"
        self.lab.move_vif(name, self.hosts[src].ns, self.hosts[dst].ns, f"vnet{v:x}")
        call_in_netns(self.domains[(k, src)], send_gratuitous_arp, "eth0",
                      domain_mac(src, v), target)
        out, _ = proc.communicate(timeout=60)
        ended = time.time()
        times = reply_times(out)
        sent = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        return {"domain": name, "from": self.hosts[src].name, "to": self.hosts[dst].name,
                "from_subnet": self.p.hosts[src].subnet, "to_subnet": self.p.hosts[dst].subnet,
                "pinger": f"d{k}h{pinger}", "gap_s": max_gap(times, end=ended),
                "sent": int(sent.group(1)) if sent else 0,
                "replies": int(sent.group(2)) if sent else len(times)}

    def close(self) -> None:
        for s in [*self.sockets.values(), *self.watches.values()]:
            s.close()
        self.evpn.close()


def _links(names: list[str]) -> dict[str, tuple[int, int]]:
    """{name: (index, master)} of the links of ``names`` that exist (in a namespace)."""
    from pyroute2 import IPRoute
    wanted = set(names)
    with IPRoute() as ipr:
        return {link.get_attr("IFLA_IFNAME"): (link["index"], link.get_attr("IFLA_MASTER") or 0)
                for link in ipr.get_links() if link.get_attr("IFLA_IFNAME") in wanted}


def frr_version() -> str:
    out = subprocess.run(["/usr/lib/frr/zebra", "--version"], capture_output=True, text=True)
    m = re.search(r"version (\S+)", out.stdout)
    return m.group(1) if m else "?"


def softnet_drops() -> int:
    """Packets the machine's per-CPU input queues dropped so far (every
    namespace shares them: veth traffic of other work on the machine too)."""
    try:
        with open("/proc/net/softnet_stat") as f:
            return sum(int(line.split()[1], 16) for line in f if line.strip())
    except (OSError, ValueError, IndexError):
        return 0


def machine() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), "")
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "python": platform.python_version()}


def run(opts: argparse.Namespace, log=print) -> dict:
    p = plan(opts.hosts, opts.subnets, opts.vnets, opts.sample)
    fleet = Fleet(p, log)       # its lab removes what it made if it fails
    try:
        restore = fleet.build()
        log(f"devices made on every host in {restore:.1f} s")
        fleet.add_domains()
        fleet.announce()                # the domains' MACs are fresh in their bridges
        fleet.watch()
        first, last = fleet.start_frr()
        log(f"FRR started and configured on {len(p.hosts) + 2} nodes "
            f"({last - first:.1f} s from first to last); waiting for convergence")
        cpu_before = fleet.cpu_seconds()
        ok, per_host, poll = fleet.converge(last, opts.timeout)
        work = cpu_used(cpu_before, fleet.cpu_seconds())
        convergence = max(per_host.values()) if ok else float("inf")
        log(f"converged: {ok}, {convergence:.1f} s")
        floods, macs = fleet.counts(0)
        fleet.announce()
        drops = softnet_drops()
        # each host's domains in turn, so the pings at once are in different vnets
        heard = fleet.reach(sorted(fleet.domains, key=lambda d: (d[1], d[0])))
        drops = softnet_drops() - drops
        failed = [d for d, why in heard.items() if why]
        for k, i in failed[:10]:
            log(f"  reach: d{k}h{i}: {heard[(k, i)]}")
        log(f"reach: {len(heard) - len(failed)}/{len(heard)} domains heard every other "
            f"domain of their vnet ({drops} packets dropped by the machine's input queues "
            "meanwhile)")
        second = {}
        if failed:
            time.sleep(5)
            second = fleet.reach(failed)
            log(f"reach, again for those: {sum(1 for w in second.values() if not w)}/"
                f"{len(failed)}")
        sent, answered = len(heard), len(heard) - len(failed)
        answered_again = answered + sum(1 for w in second.values() if not w)
        failures = [f"d{k}h{i}: {why}" for (k, i), why in second.items() if why]
        log(f"idle for {opts.idle:g} s")
        usage = fleet.resources(opts.idle)
        migrations = []
        for m in range(opts.migrations):
            migrations.append(fleet.migrate(*migration_plan(p, m)))
            log(f"migration {migrations[-1]['domain']}: {migrations[-1]['gap_s']:.2f} s")
    finally:
        fleet.close()
    hosts = [usage[h.name] for h in p.hosts]
    rrs = [usage[name] for name, _, _ in p.reflectors]
    per_host_rss = [sum(h[d]["rss_mib"] for d in ("zebra", "bgpd", "vnetd")) for h in hosts]
    per_host_cpu = [sum(h[d]["cpu_pct"] for d in ("zebra", "bgpd", "vnetd")) for h in hosts]
    return {
        "date": datetime.date.today().isoformat(), "machine": machine(), "frr": frr_version(),
        "hosts": len(p.hosts), "subnets": p.subnets, "vnets": len(p.vnets),
        "sample_vnets": [f"{v:x}" for v in p.sample],
        "restore_s": restore, "frr_start_s": last - first,
        "converged": ok, "convergence_s": convergence, "poll_round_s": poll,
        "host_converged_s": spread(per_host.values()),
        "flood_entries_per_host": floods, "remote_macs_per_host": macs,
        "ping_sent": sent, "ping_ok": answered, "ping_ok_second_pass": answered_again,
        "ping_failures": failures, "ping_first_pass_failures": [
            f"d{k}h{i}: {why}" for (k, i), why in heard.items() if why],
        "softnet_drops_during_pings": drops,
        "idle_s": opts.idle,
        "host_rss_mib": spread(per_host_rss), "host_idle_cpu_pct": spread(per_host_cpu),
        "rss_parts_mib": {d: statistics.median(h[d]["rss_mib"] for h in hosts)
                          for d in ("zebra", "bgpd", "vnetd", "xend-vnet")},
        "cpu_parts_pct": {d: statistics.median(h[d]["cpu_pct"] for h in hosts)
                          for d in ("zebra", "bgpd", "vnetd", "xend-vnet")},
        "reflector_rss_mib": spread(sum(r[d]["rss_mib"] for d in ("zebra", "bgpd"))
                                    for r in rrs),
        "reflector_idle_cpu_pct": spread(sum(r[d]["cpu_pct"] for d in ("zebra", "bgpd"))
                                         for r in rrs),
        "migrations": migrations,
        "convergence_cpu_s": work,
    }


def _terminate(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=32)
    ap.add_argument("--subnets", type=int, default=4)
    ap.add_argument("--vnets", type=int, default=100)
    ap.add_argument("--sample", type=int, default=4, help="vnets with domain namespaces")
    ap.add_argument("--idle", type=float, default=30.0, help="seconds of idle CPU measured")
    ap.add_argument("--migrations", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=600.0, help="for convergence")
    ap.add_argument("--json", metavar="FILE", help="default benchmarks/results/evpn-fleet-DATE")
    opts = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("evpn_fleet: needs root (network namespaces, FRR)", file=sys.stderr)
        return 2
    from throughput import BenchError, take_lock
    try:
        lock = take_lock(LOCK_PATH, f"its {PREFIX}* namespaces are in use")
    except BenchError as e:
        print(f"evpn_fleet: {e}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()

    def log(text: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}] {text}", flush=True)
    try:
        results = run(opts, log)
    finally:
        os.close(lock)
    text = report(results)
    print(text, end="")
    path = opts.json or os.path.join(
        RESULTS, f"evpn-fleet-{results['date']}-{results['hosts']}x{results['vnets']}.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    with open(os.path.splitext(path)[0] + ".txt", "w") as f:
        f.write(text)
    print(f"results in {path}")
    return 0 if "verdict: PASS" in text else 1


if __name__ == "__main__":
    sys.exit(main())
