#!/usr/bin/env python3
"""Throughput and latency of a vnet against plain veth and kernel VXLAN.

Builds, in network namespaces named ``xvb-*``, two hosts joined by a veth
underlay (192.0.2.1 and 192.0.2.2, multicast routed on the link) and two
domains, each domain wired to its host twice like Xen's vif-bridge does:
one veth on the host's VXLAN bridge (10.42.0.0/24) and one on the host's
vnet bridge, whose other port is vnetd's TAP (10.99.0.0/24).  Then, for

  veth   the underlay itself, host to host (the baseline),
  vxlan  domain to domain through kernel VXLAN (id 42, UDP 4789),
  plain-tap  domain to domain through two vnetd engines started with
         ``--no-tap-offload`` (vnet 99, UDP 1798): one frame per TAP read,
         per datagram and per TAP write, as the legacy daemon works,
  plain-tap-auth, plain-tap-conf  the same through secured vnets 9a
         (auth) and 9b (conf) of the same engines (docs/security.md),
  plain, plain-auth, plain-conf  the same with ``--no-offload``: the
         legacy-compatible path, one frame per datagram, what legacy hosts
         get from our engine (TAP offloads, plain segments cut to fit the
         underlay and sent as UDP_SEGMENT trains, received segments merged
         before the TAP),
  fast, fast-auth, fast-conf  the same after restarting both engines with
         offloads (the default: TAP offloads, fast framing, UDP_SEGMENT/GRO),
  kernel vxlan data path  vnet 9c with ``(data-path vxlan)`` (10.156.0.0/24):
         the engines put the kernel's VXLAN device on its bridge
         (docs/vxlan.md); measured once, during the first phase,
  naive  a naive CPython TAP-to-UDP forwarder (naive_forwarder.py: a read
         and a sendto per frame, nothing else) on vnet 99's TAP: the floor
         of any CPython engine on this machine, ping round trip included,
  legacy the legacy C vnetd, when ``--legacy-vnetd PATH`` is given: it is
         started in both hosts with ``--legacy-args`` and must bring up the
         TAP ``vnif0099`` for vnet 99 (none exists on our machines),

it runs iperf3 (TCP, one stream) and ping, ``--runs`` times each, and prints
the medians with their ratios to the baseline and to kernel VXLAN, and the
UDP receive-buffer errors of both hosts during each path's runs.  Paths
measured together (veth and vxlan; the three levels of one phase) take their
samples in turns, so the drift of a shared machine weighs on each alike and
their ratios are fair.  Everything it creates is
removed on exit, also on failure or Ctrl-C.  Needs root, iproute2, iperf3
and ping.  The benchmark uses ``ip`` itself; the product never does.

    python3 benchmarks/throughput.py [--runs 3] [--seconds 5] [--json FILE]
                                     [--vnet-mtu 1500] [--profile PREFIX]
                                     [--phases plain-tap,plain,fast,naive]
                                     [--legacy-vnetd PATH --legacy-args ARGS]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

PREFIX = "xvb-"
H1, H2, D1, D2 = (PREFIX + n for n in ("h1", "h2", "d1", "d2"))
UNDERLAY = {H1: ("xvb-u1", "192.0.2.1"), H2: ("xvb-u2", "192.0.2.2")}
# id, TAP, bridge tag, domain subnet, security: one vnet per security level.
VNETS = (("99", "vnif0099", "vn", "10.99.0", "none"),
         ("9a", "vnif009a", "va", "10.154.0", "auth"),
         ("9b", "vnif009b", "vc", "10.155.0", "conf"))
VXLAN_MTU = 1450  # 1500 minus VXLAN's 50 bytes of headers
# vnet 9c on the engines' kernel VXLAN data path: id, device, bridge tag, subnet.
VXLAN_VNET = ("9c", "vnif009c", "vk", "10.156.0")
VXLAN_DATA_PATH = ("vxlan-path", "kernel vxlan data path", D1, D2, "10.156.0.2")
# phase -> (name, label, client namespace, server namespace, server address)
KERNEL_PATHS = (
    ("veth", "veth (baseline)", H1, H2, "192.0.2.2"),
    ("vxlan", "kernel VXLAN", D1, D2, "10.42.0.2"),
)
PHASES = {
    "plain-tap": ("--no-tap-offload", "vnetd --no-tap-offload"),
    "plain": ("--no-offload", "vnetd --no-offload"),
    "fast": (None, "vnetd offload"),
}
LEGACY_PATH = ("legacy", "legacy C vnetd", D1, D2, "10.99.0.2")
NAIVE = "naive"     # the phase of naive_forwarder.py
NAIVE_PATH = (NAIVE, "naive CPython forwarder", D1, D2, "10.99.0.2")


def engine_paths(phase: str) -> tuple:
    label = PHASES[phase][1]
    return ((phase, label, D1, D2, "10.99.0.2"),
            (phase + "-auth", label + " auth", D1, D2, "10.154.0.2"),
            (phase + "-conf", label + " conf", D1, D2, "10.155.0.2"))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One run at a time owns the namespaces (latency.py shares the test bed).
LOCK_PATH = os.path.join(tempfile.gettempdir(), "xend-vnet-benchmark.lock")


class BenchError(Exception):
    pass


def sh(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, check=False, timeout=timeout)
    if check and done.returncode != 0:
        raise BenchError(f"{' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def ip(*args: str) -> None:
    sh("ip", *args)


def in_ns(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *args]


def wait_for(what: str, test, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not test():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        time.sleep(0.1)


def rcvbuf_errors(hosts) -> int:
    """UDP receive-buffer drops so far in the namespaces ``hosts`` together
    (/proc/net/snmp): what a socket lost before its engine saw it."""
    total = 0
    for host in hosts:
        lines = [line.split() for line in sh(*in_ns(host, "cat", "/proc/net/snmp"))
                 .stdout.split("\n") if line.startswith("Udp:")]
        if len(lines) >= 2 and "RcvbufErrors" in lines[0]:
            total += int(lines[1][lines[0].index("RcvbufErrors")])
    return total


def take_lock(path: str, busy: str) -> int:
    """Hold the lock at ``path`` (one benchmark run at a time owns what it
    guards); BenchError saying ``busy`` when another run holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BenchError(f"another run holds {path}: {busy}") from None
    return fd


class Testbed:
    """The namespaces, links and processes of one benchmark run."""

    def __init__(self, vnet_mtu: int, profile: str | None):
        self.vnet_mtu = vnet_mtu
        self.profile = profile
        self.procs: list[subprocess.Popen] = []
        self.engines: list[subprocess.Popen] = []
        self.workdir = tempfile.mkdtemp(prefix=PREFIX)
        self.lock_fd: int | None = None     # held while this run owns the xvb- namespaces

    # -- set-up --------------------------------------------------------------------------

    def build(self) -> None:
        self.lock_fd = take_lock(LOCK_PATH, f"its {PREFIX}* namespaces are in use")
        remove_namespaces()  # leftovers of an interrupted run
        for ns in (H1, H2, D1, D2):
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        u1, u2 = UNDERLAY[H1][0], UNDERLAY[H2][0]
        ip("link", "add", u1, "netns", H1, "type", "veth", "peer", "name", u2, "netns", H2)
        for host, (dev, addr) in UNDERLAY.items():
            ip("-n", host, "addr", "add", f"{addr}/24", "dev", dev)
            ip("-n", host, "link", "set", dev, "up")
            # design.md 11: multicast between namespaces needs the route.
            ip("-n", host, "route", "add", "224.0.0.0/4", "dev", dev)
        for i, (host, dom) in enumerate(((H1, D1), (H2, D2)), start=1):
            self._vxlan(host, dom, i)
            for _, _, tag, subnet, _ in VNETS:
                self._bridge_with_domain(host, dom, i, tag, None, f"{subnet}.{i}",
                                         self.vnet_mtu)
            self._bridge_with_domain(host, dom, i, VXLAN_VNET[2], None,
                                     f"{VXLAN_VNET[3]}.{i}", min(self.vnet_mtu, VXLAN_MTU))
        for ns in (H2, D2):
            self.start([*in_ns(ns, "iperf3", "-s")], f"iperf3-{ns}")

    def start_engines(self, phase: str) -> None:
        """Both vnetd with this phase's options; their TAPs go on the vnet bridges."""
        for host in (H1, H2):
            self._vnetd(host, phase)
        self._enslave_taps(tuple(tap for _, tap, _, _, _ in VNETS))
        self._enslave_vxlan_device()
        self.warm_up(engine_paths(phase) + (VXLAN_DATA_PATH,))

    def _enslave_vxlan_device(self) -> None:
        """The engines' VXLAN device goes on vnet 9c's bridge (xend-vnet's job on a host)."""
        _, dev, tag, _ = VXLAN_VNET
        for host in (H1, H2):
            wait_for(f"{dev} in {host}", lambda h=host: sh(
                *in_ns(h, "ip", "link", "show", dev), check=False).returncode == 0)
            ip("-n", host, "link", "set", dev, "master", f"xvb-br{tag}", "up")

    def start_legacy(self, path: str, args: str) -> None:
        """The legacy daemon in both hosts; it must bring up vnif0099 for vnet 99."""
        for host in (H1, H2):
            argv = [a.format(device=UNDERLAY[host][0], addr=UNDERLAY[host][1])
                    for a in args.split()]
            self.engines.append(self.start([*in_ns(host, path, *argv)], f"legacy-{host}"))
        self._enslave_taps((VNETS[0][1],))
        self.warm_up((LEGACY_PATH,))

    def start_naive(self) -> None:
        """naive_forwarder.py in both hosts on vnet 99's TAP, each toward the other."""
        tap = VNETS[0][1]
        for host, peer in ((H1, H2), (H2, H1)):
            # The engines' TAPs persist, with their offloads on: a fresh one.
            sh(*in_ns(host, "ip", "link", "del", tap), check=False)
            self.engines.append(self.start(
                [*in_ns(host, sys.executable, os.path.join(REPO, "benchmarks",
                                                            "naive_forwarder.py"),
                        tap, UNDERLAY[peer][1])], f"naive-{host}"))
            ip("-n", host, "link", "set", tap, "mtu", str(self.vnet_mtu))
        self._enslave_taps((tap,))
        self.warm_up((NAIVE_PATH,))

    def _enslave_taps(self, taps: tuple) -> None:
        for i, host in enumerate((H1, H2), start=1):
            for _, tap, tag, _, _ in VNETS:
                if tap not in taps:
                    continue
                wait_for(f"{tap} in {host}", lambda h=host, t=tap: sh(
                    *in_ns(h, "ip", "link", "show", t), check=False).returncode == 0)
                ip("-n", host, "link", "set", tap, "master", f"xvb-br{tag}", "up")

    def warm_up(self, paths: tuple) -> None:
        """Resolve ARP and let the engines learn before anything is measured."""
        for _, _, client, _, addr in paths:
            sh(*in_ns(client, "ping", "-c", "3", "-i", "0.2", "-W", "2", addr), check=False)

    def stop_engines(self) -> None:
        for p in self.engines:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.engines:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.engines.clear()

    def _vxlan(self, host: str, dom: str, i: int) -> None:
        dev, local = UNDERLAY[host]
        remote = UNDERLAY[H2 if host == H1 else H1][1]
        ip("-n", host, "link", "add", "xvb-vx", "type", "vxlan", "id", "42", "local", local,
           "remote", remote, "dstport", "4789", "dev", dev)
        self._bridge_with_domain(host, dom, i, "vx", "xvb-vx", f"10.42.0.{i}", VXLAN_MTU)

    def _vnetd(self, host: str, phase: str) -> None:
        control = os.path.join(self.workdir, f"{host}.sock")
        startup = os.path.join(self.workdir, f"{host}.conf")
        key = os.path.join(self.workdir, "vnet.key")
        if not os.path.exists(key):
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, os.urandom(32).hex().encode() + b"\n")
            os.close(fd)
        with open(startup, "w") as f:
            for vid, _, _, _, security in VNETS:
                extra = f" (security {security}) (key-file {key})" if security != "none" else ""
                f.write(f"(vnet.add (id {vid}){extra})\n")
            f.write(f"(vnet.add (id {VXLAN_VNET[0]}) (data-path vxlan))\n")
        python = [sys.executable]
        if self.profile:
            python += ["-m", "cProfile", "-o", f"{self.profile}-{phase}-{host}.prof"]
        env_cmd = ["env", f"PYTHONPATH={REPO}"]
        option = PHASES[phase][0]
        self.engines.append(self.start(
            [*in_ns(host, *env_cmd, *python, "-m", "xend_vnet.kernel_shim.daemon",
                    "--control", control, "--no-default-vnets", "-f", startup,
                    "--mtu", str(self.vnet_mtu), "--device", UNDERLAY[host][0],
                    "--epoch-file", control + ".epoch",
                    "--log-file", os.path.join(self.workdir, f"{host}.log"),
                    *(option.split() if option else []))],
            f"vnetd-{phase}-{host}"))

    def _bridge_with_domain(self, host: str, dom: str, i: int, tag: str, port: str | None,
                            addr: str, mtu: int) -> None:
        bridge, host_end = f"xvb-br{tag}", f"xvb-d{i}{tag}"
        ip("-n", host, "link", "add", bridge, "type", "bridge", "stp_state", "0",
           "forward_delay", "0")
        ip("-n", host, "link", "set", bridge, "up")
        if port:
            ip("-n", host, "link", "set", port, "master", bridge, "up")
        ip("link", "add", host_end, "netns", host, "mtu", str(mtu), "type", "veth",
           "peer", "name", tag + "0", "netns", dom, "mtu", str(mtu))
        ip("-n", host, "link", "set", host_end, "master", bridge)
        ip("-n", host, "link", "set", host_end, "up")
        ip("-n", dom, "addr", "add", f"{addr}/24", "dev", tag + "0")
        ip("-n", dom, "link", "set", tag + "0", "up")

    def start(self, argv: list[str], name: str) -> subprocess.Popen:
        with open(os.path.join(self.workdir, f"{name}.out"), "w") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        time.sleep(0.3)
        if proc.poll() is not None:
            with open(os.path.join(self.workdir, f"{name}.out")) as f:
                raise BenchError(f"{name} exited at start: {f.read().strip()}")
        return proc

    # -- measurements ----------------------------------------------------------------------

    def iperf(self, client: str, addr: str, seconds: float) -> dict:
        for attempt in range(3):
            done = sh(*in_ns(client, "iperf3", "-c", addr, "-t", f"{seconds:g}", "-J"),
                      check=False, timeout=seconds + 60)
            try:
                result = json.loads(done.stdout)
            except ValueError:
                result = {"error": done.stderr.strip() or "no output"}
            if "error" not in result:
                end = result["end"]
                return {"bits_per_second": end["sum_received"]["bits_per_second"],
                        "retransmits": end["sum_sent"].get("retransmits", 0)}
            time.sleep(1)
        raise BenchError(f"iperf3 to {addr} from {client}: {result['error']}")

    def ping(self, client: str, addr: str, count: int) -> dict:
        done = sh(*in_ns(client, "ping", "-q", "-c", str(count), "-i", "0.05", "-W", "2", addr),
                  check=False, timeout=count + 30)
        rtt = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms", done.stdout)
        loss = re.search(r"([\d.]+)% packet loss", done.stdout)
        if rtt is None:
            raise BenchError(f"ping {addr} from {client}: {done.stdout.strip()}")
        return {"rtt_avg_ms": float(rtt.group(2)), "rtt_min_ms": float(rtt.group(1)),
                "loss_percent": float(loss.group(1)) if loss else None}

    def rcvbuf_errors(self) -> int:
        """UDP receive-buffer drops so far, both hosts together (/proc/net/snmp)."""
        return rcvbuf_errors((H1, H2))

    # -- tear-down ---------------------------------------------------------------------------

    def cleanup(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()
        if self.lock_fd is not None:       # never another run's namespaces
            remove_namespaces()
            os.close(self.lock_fd)
            self.lock_fd = None
        shutil.rmtree(self.workdir, ignore_errors=True)


def remove_namespaces() -> None:
    """Delete this benchmark's namespaces (links inside them go with them)."""
    listed = sh("ip", "netns", "list", check=False).stdout.split("\n")
    for line in listed:
        name = line.split(" ")[0]
        if name.startswith(PREFIX):
            sh("ip", "netns", "del", name, check=False)


def machine() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), "")
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "python": platform.python_version(),
            "iperf3": sh("iperf3", "--version", check=False).stdout.split("\n")[0]}


def measure(bed: Testbed, paths: tuple, runs: int, seconds: float, pings: int) -> dict:
    """``runs`` samples of each path, taken in turns (path 1, path 2, ..., path 1,
    ...): a shared machine's speed drifts over minutes, and paths compared with each other
    (none, auth and conf of one phase; veth and VXLAN) should see the same drift."""
    samples: dict = {name: [] for name, *_ in paths}
    rcvbuf: dict = dict.fromkeys(samples, 0)
    errors = bed.rcvbuf_errors()
    for _ in range(runs):
        for name, _, client, _, addr in paths:
            sample = bed.iperf(client, addr, seconds)
            sample.update(bed.ping(client, addr, pings))
            samples[name].append(sample)
            errors_before, errors = errors, bed.rcvbuf_errors()
            rcvbuf[name] += errors - errors_before
    results: dict = {}
    for name, label, *_ in paths:
        taken = samples[name]
        results[name] = {
            "label": label, "samples": taken,
            "gbit_per_second": statistics.median(s["bits_per_second"] for s in taken) / 1e9,
            "rtt_avg_ms": statistics.median(s["rtt_avg_ms"] for s in taken),
            "retransmits": statistics.median(s["retransmits"] for s in taken),
            "rcvbuf_errors": rcvbuf[name],
        }
    return results


def measure_all(bed: Testbed, opts: argparse.Namespace) -> dict:
    """Every path in one run: the kernel, then each engine phase, then legacy."""
    args = (opts.runs, opts.seconds, opts.pings)
    results = measure(bed, KERNEL_PATHS, *args)
    for phase in opts.phases:
        if phase == NAIVE:
            bed.start_naive()
            results.update(measure(bed, (NAIVE_PATH,), *args))
            bed.stop_engines()
            continue
        bed.start_engines(phase)
        results.update(measure(bed, engine_paths(phase), *args))
        if "vxlan-path" not in results:
            # The kernel carries it whatever the engines' options: measured once.
            results.update(measure(bed, (VXLAN_DATA_PATH,), *args))
        bed.stop_engines()
    if opts.legacy_vnetd:
        bed.start_legacy(opts.legacy_vnetd, opts.legacy_args)
        results.update(measure(bed, (LEGACY_PATH,), *args))
        bed.stop_engines()
    return results


def table(results: dict, vnet_mtu: int) -> str:
    base, vxlan = results["veth"], results["vxlan"]
    header = (f"{'path':<27} {'MTU':>5} {'Gbit/s':>8} {'x veth':>7} {'x VXLAN':>8} "
              f"{'RTT ms':>7} {'x veth':>7} {'retrans':>8} {'rcvbuf':>7}")
    lines = [header]
    for name, r in results.items():
        mtu = {"veth": 1500, "vxlan": VXLAN_MTU,
               "vxlan-path": min(vnet_mtu, VXLAN_MTU)}.get(name, vnet_mtu)
        lines.append(
            f"{r['label']:<27} {mtu:>5} {r['gbit_per_second']:>8.3f} "
            f"{r['gbit_per_second'] / base['gbit_per_second']:>7.3f} "
            f"{r['gbit_per_second'] / vxlan['gbit_per_second']:>8.3f} "
            f"{r['rtt_avg_ms']:>7.3f} {r['rtt_avg_ms'] / base['rtt_avg_ms']:>7.2f} "
            f"{r['retransmits']:>8g} {r['rcvbuf_errors']:>7}")
    return "\n".join(lines)


# design.md 11 measured the legacy C vnetd side by side with veth and kernel
# VXLAN on this kind of machine: 0.79 Gbit/s and 0.23 ms ping against VXLAN's
# 15.1 Gbit/s and 0.07 ms.  Without a legacy binary, its figures for this run
# are estimated from this run's VXLAN row with those ratios.
LEGACY_PER_VXLAN = 0.79 / 15.1
LEGACY_RTT_PER_VXLAN = 0.23 / 0.07


def targets(results: dict) -> str:
    """The target ratios, from this run (only those whose rows ran)."""
    def gbit(name: str) -> float:
        return results[name]["gbit_per_second"]

    def rtt(name: str) -> float:
        return results[name]["rtt_avg_ms"]
    out = []
    if {"fast", "vxlan"} <= results.keys():
        out.append(f"# fast / VXLAN {gbit('fast') / gbit('vxlan'):.3f} "
                   "(target 0.25, stretch 0.35)")
    if {"vxlan-path", "vxlan"} <= results.keys():
        out.append(f"# kernel vxlan data path / kernel VXLAN "
                   f"{gbit('vxlan-path') / gbit('vxlan'):.2f}")
    if {"fast", "fast-conf"} <= results.keys():
        out.append(f"# conf / none on the fast path {gbit('fast-conf') / gbit('fast'):.2f} "
                   "(target 0.75)")
    for plain in ("plain", "plain-tap"):
        if plain not in results:
            continue
        if "legacy" in results:
            legacy, legacy_rtt, how = gbit("legacy"), rtt("legacy"), "legacy C vnetd, this run"
        elif "vxlan" in results:
            legacy = gbit("vxlan") * LEGACY_PER_VXLAN
            legacy_rtt = rtt("vxlan") * LEGACY_RTT_PER_VXLAN
            how = ("legacy C vnetd estimated from this run's VXLAN with design.md 11's "
                   "side-by-side ratios")
        else:
            continue
        out.append(f"# {results[plain]['label']} / legacy {gbit(plain) / legacy:.2f} "
                   f"(target 1.2), RTT {rtt(plain):.3f} against {legacy_rtt:.3f} ms "
                   f"({rtt(plain) / legacy_rtt:.2f}x, target at most 1); {how}")
    if NAIVE in results:
        for plain in ("plain", "plain-tap"):
            if plain in results:
                out.append(f"# {results[plain]['label']} / naive CPython forwarder: "
                           f"throughput {gbit(plain) / gbit(NAIVE):.2f}, "
                           f"RTT {rtt(plain) / rtt(NAIVE):.2f}x")
        if "vxlan" in results and "legacy" not in results:
            out.append(f"# naive CPython forwarder RTT {rtt(NAIVE):.3f} ms against the "
                       f"legacy estimate {rtt('vxlan') * LEGACY_RTT_PER_VXLAN:.3f} ms")
    return "\n".join(out)


def profile_summary(prefix: str, top: int = 12) -> str:
    import pstats
    out = []
    for phase in PHASES:
        for host in (H1, H2):
            path = f"{prefix}-{phase}-{host}.prof"
            if not os.path.exists(path):
                continue
            role = "sender (TAP -> UDP)" if host == H1 else "receiver (UDP -> TAP)"
            out.append(f"--- {PHASES[phase][1]} in {host}, {role}: top {top} by own time")
            stream = _Capture()
            pstats.Stats(path, stream=stream).sort_stats("tottime").print_stats(top)
            body = stream.text()
            start = body.find("   ncalls")
            out.append(body[start:].rstrip() if start >= 0 else body.rstrip())
    return "\n".join(out)


class _Capture:
    def __init__(self):
        self.parts: list[str] = []

    def write(self, text: str) -> None:
        self.parts.append(text)

    def text(self) -> str:
        return "".join(self.parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="runs per path; medians shown")
    p.add_argument("--seconds", type=float, default=5.0, help="iperf3 duration per run")
    p.add_argument("--pings", type=int, default=20, help="pings per run (0.05 s apart)")
    p.add_argument("--vnet-mtu", type=int, default=1500,
                   help="MTU of the vnet TAPs and domain links (default 1500, the engine's)")
    p.add_argument("--json", metavar="FILE", help="write every sample and the medians here")
    p.add_argument("--profile", metavar="PREFIX",
                   help="run both vnetd under cProfile, write PREFIX-<host>.prof and print "
                        "where they spend time (slows the engines: figures are not comparable)")
    p.add_argument("--legacy-vnetd", metavar="PATH",
                   help="also measure this legacy C vnetd binary (run in both hosts)")
    p.add_argument("--legacy-args", default="",
                   help="its arguments; {device} and {addr} become the host's underlay "
                        "device and address")
    p.add_argument("--phases", default=",".join([*PHASES, NAIVE]),
                   help="engine phases (and the naive forwarder) to run, comma-separated "
                        "(default %(default)s)")
    opts = p.parse_args(argv)
    opts.phases = [ph for ph in opts.phases.split(",") if ph]
    unknown = [ph for ph in opts.phases if ph not in PHASES and ph != NAIVE]
    if unknown:
        p.error(f"unknown phase {', '.join(unknown)}; choose from "
                f"{', '.join([*PHASES, NAIVE])}")
    if os.geteuid() != 0:
        print("throughput.py: needs root (network namespaces)", file=sys.stderr)
        return 1
    for tool in ("ip", "iperf3", "ping"):
        if shutil.which(tool) is None:
            print(f"throughput.py: {tool} is not installed", file=sys.stderr)
            return 1
    profile = os.path.abspath(opts.profile) if opts.profile else None
    bed = Testbed(opts.vnet_mtu, profile)
    # SIGTERM and SIGHUP end the run through the same clean-up as Ctrl-C.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(1))
    try:
        bed.build()
        results = measure_all(bed, opts)
    except BenchError as e:
        print(f"throughput.py: {e}", file=sys.stderr)
        return 1
    finally:
        bed.cleanup()
    info = machine()
    print(f"# {info['nproc']} CPUs, {info['cpu']}, Linux {info['kernel']}, "
          f"Python {info['python']}, {info['iperf3']}")
    print(f"# iperf3 TCP one stream {opts.seconds:g} s, {opts.pings} pings at 0.05 s, "
          f"median of {opts.runs} run{'s' if opts.runs != 1 else ''}")
    print(table(results, opts.vnet_mtu))
    print(targets(results))
    if profile:
        print(profile_summary(profile))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"machine": info, "options": vars(opts), "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
