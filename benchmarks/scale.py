#!/usr/bin/env python3
"""Scale of one engine: many vnets on one host (target 6).

Starts one vnetd in a network namespace named ``xvs-h1`` (with an underlay
veth so it has an address and the group), adds ``--vnets`` vnets one by one
through the control socket, and reports the time per ``vnet.add`` (median
and 95th percentile), the engine's resident memory per vnet, and its CPU
use while idle with all of them (``--idle`` seconds).  Everything it
creates is removed on exit.  Needs root and iproute2.

    python3 benchmarks/scale.py [--vnets 1000] [--idle 10] [--json FILE]

With ``--engines N`` it measures many engines on one link instead (the
second half of target 6): an underlay bridge in namespace ``xvs-lan``
(multicast snooping off: a plain LAN, every group datagram reaches every
host), hosts ``xvs-h1..N`` (``--prefix``; eth0 192.0.2.<i>/24, 224.0.0.0/4 routed on
it), one vnetd per host with vnet 97 from a startup file, and one domain
``xvs-d<i>`` per host (10.97.0.<i>/24) on a bridge with the engine's TAP.
The load is bounded and the same for every host: each domain sends
``--bursts`` UDP broadcasts (port 9, each one flood) and pings ``--pings``
domains of other hosts twice (one ARP request flood per pair, the rest
unicast).  Counters are read inside each host namespace: the engine's
``(vnet.stats)`` (floods, announces, datagrams, drops) and the kernel's
count of IP multicast packets received (``IpExt InMcastPkts``: the group
datagrams that reached the host; the joins' IGMP reports are over before
the first reading).
Then ``--quiet`` seconds without load, during which group traffic must
stay at zero (no storm), with the engines' CPU.  Nothing leaves the
namespaces it makes; all of them and every process go on exit, also on
failure or Ctrl-C.

    python3 benchmarks/scale.py --engines 32 [--bursts 3] [--pings 2] [--quiet 10] [--json FILE]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import pickle
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from xend_vnet.engine_client import EngineClient  # noqa: E402

NS = "xvs-h1"
PEER_NS = "xvs-h2"


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=60)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cleanup() -> None:
    for ns in (NS, PEER_NS):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def run(vnets: int, idle: float) -> dict:
    cleanup()
    work = tempfile.mkdtemp(prefix="xvs-")
    proc = None
    try:
        for ns in (NS, PEER_NS):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", "xvs-u1", "netns", NS, "type", "veth", "peer", "name",
           "xvs-u2", "netns", PEER_NS)
        sh("ip", "-n", NS, "addr", "add", "192.0.2.1/24", "dev", "xvs-u1")
        sh("ip", "-n", NS, "link", "set", "xvs-u1", "up")
        sh("ip", "-n", NS, "route", "add", "224.0.0.0/4", "dev", "xvs-u1")
        control = os.path.join(work, "vnetd.sock")
        with open(os.path.join(work, "vnetd.log"), "w") as log:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", NS, "env", f"PYTHONPATH={REPO}", sys.executable, "-m",
                 "xend_vnet.kernel_shim.daemon", "--control", control, "--no-default-vnets",
                 "--epoch-file", control + ".epoch", "--device", "xvs-u1",
                 "--allow-foreign-netns"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        client = EngineClient(control, timeout=30)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.call(["engine.status"])
                break
            except Exception:  # noqa: BLE001 -- not up yet
                if time.monotonic() > deadline or proc.poll() is not None:
                    with open(os.path.join(work, "vnetd.log")) as f:
                        raise RuntimeError(f"vnetd did not start: {f.read()}") from None
                time.sleep(0.1)
        pid = proc.pid      # ip netns exec and env exec: the engine's own pid
        base_rss = rss_kib(pid)
        times = []
        for n in range(1, vnets + 1):
            t0 = time.monotonic()
            client.call(["vnet.add", ["id", f"{0x1000 + n:x}"]])
            times.append(time.monotonic() - t0)
        full_rss = rss_kib(pid)
        time.sleep(1.0)
        c0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(idle)
        c1, t1 = cpu_seconds(pid), time.monotonic()
        times.sort()
        return {
            "vnets": vnets,
            "add_median_ms": statistics.median(times) * 1e3,
            "add_p95_ms": times[int(len(times) * 0.95) - 1] * 1e3,
            "add_total_s": sum(times),
            "rss_base_kib": base_rss,
            "rss_full_kib": full_rss,
            "rss_per_vnet_kib": (full_rss - base_rss) / vnets,
            "idle_cpu_percent": 100 * (c1 - c0) / (t1 - t0),
        }
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        cleanup()       # the namespace takes its TAPs with it
        shutil.rmtree(work, ignore_errors=True)


# -- many engines on one link (--engines N) ---------------------------------------

VNET = "97"
TAP = "vnif0097"
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/var/run/netns"
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(ns: str) -> None:
    fd = os.open(os.path.join(NETNS_DIR, ns), os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"setns {ns}: {os.strerror(e)}")
    finally:
        os.close(fd)


def in_namespaces(jobs: list[tuple[str, object, tuple]], timeout: float = 120) -> list:
    """Run each ``(ns, func, args)`` in a forked child that enters ``ns`` in
    turn (so a control socket sees a caller of its own namespace); return
    the results in order, an exception text for a job that failed."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:    # never returns into the caller's code (its finally clauses clean up)
            os.close(r)
            out = []
            for ns, func, args in jobs:
                try:
                    _setns(ns)
                    out.append(("ok", func(*args)))
                except BaseException as e:  # noqa: BLE001 -- reported to the parent
                    out.append(("err", f"{type(e).__name__}: {e}"))
            with os.fdopen(w, "wb") as f:
                f.write(pickle.dumps(out))
        finally:
            os._exit(0)
    os.close(w)
    ready, _, _ = select.select([r], [], [], timeout)
    data = b""
    if ready:
        with os.fdopen(r, "rb") as f:
            data = f.read()
    else:
        os.close(r)
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    if not data:
        raise RuntimeError("namespace calls timed out or died")
    return [value if kind == "ok" else RuntimeError(value) for kind, value in pickle.loads(data)]


def _flatten(form: list) -> dict[str, object]:
    """``(name value)`` children as a dict; ``(dropped (r n) ...)`` as {r: n}."""
    out: dict[str, object] = {}
    for c in form[1:]:
        if not isinstance(c, list) or not c:
            continue
        if len(c) == 2 and isinstance(c[1], str):
            out[c[0]] = int(c[1]) if c[1].isdigit() else c[1]
        else:
            out[c[0]] = {r[0]: int(r[1]) for r in c[1:] if isinstance(r, list) and len(r) == 2}
    return out


def _snapshot(control: str) -> dict:
    """Inside a host namespace: engine and vnet counters, eth0's kernel counters."""
    from xend_vnet import sxp  # noqa: PLC0415 -- in the forked child only
    client = EngineClient(control, timeout=10)
    forms = client.call(["vnet.stats"])
    engine = next(_flatten(f) for f in forms if f[:1] == ["engine_stats"])
    vnet = next(_flatten(f) for f in forms if f[:1] == ["vnet_stats"])
    (status,) = [f for f in client.call(["engine.status"]) if f[:1] == ["engine.status"]]
    joined = sxp.child_value(status, "group-joined")
    with open("/proc/self/net/netstat") as f:
        names, values = [line.split() for line in f if line.startswith("IpExt:")]
    ipext = dict(zip(names[1:], map(int, values[1:])))
    return {"engine": engine, "vnet": vnet, "joined": joined,
            "in_mcast": ipext["InMcastPkts"], "out_mcast": ipext["OutMcastPkts"]}


def _broadcast(count: int, gap: float) -> int:
    """Inside a domain namespace: ``count`` UDP broadcasts to the vnet's subnet."""
    import socket  # noqa: PLC0415
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        for _ in range(count):
            s.sendto(b"xvs scale benchmark", ("10.97.0.255", 9))
            time.sleep(gap)
    finally:
        s.close()
    return count


class EngineLab:
    """The namespaces and processes of one --engines run; close() removes them all."""

    def __init__(self, n: int, prefix: str):
        self.n = n
        self.prefix = prefix
        self.work = tempfile.mkdtemp(prefix=prefix)
        self.made: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.engines: list[subprocess.Popen] = []
        self.lan = prefix + "lan"
        self.hosts = [f"{prefix}h{i}" for i in range(1, n + 1)]
        self.domains = [f"{prefix}d{i}" for i in range(1, n + 1)]
        self.controls = [os.path.join(self.work, f"h{i}.sock") for i in range(1, n + 1)]
        self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        ours = {self.lan, *self.hosts, *self.domains}
        try:
            existing = os.listdir(NETNS_DIR)
        except FileNotFoundError:
            existing = []
        for ns in existing:
            if ns in ours:
                self._delete_namespace(ns)

    def ns_sh(self, ns: str, *cmd: str) -> None:
        sh("ip", "netns", "exec", ns, *cmd)

    def netns(self, ns: str) -> str:
        sh("ip", "netns", "add", ns)
        self.made.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        # No IPv6 chatter (router solicitations, MLD) in the counters.
        self.ns_sh(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                   "net.ipv6.conf.default.disable_ipv6=1")
        return ns

    def build(self) -> None:
        lan = self.netns(self.lan)
        sh("ip", "-n", lan, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        sh("ip", "-n", lan, "link", "set", "br0", "up")
        for i, host in enumerate(self.hosts, 1):
            self.netns(host)
            sh("ip", "link", "add", "eth0", "netns", host, "type", "veth", "peer", "name",
               f"u-h{i}", "netns", lan)
            sh("ip", "-n", lan, "link", "set", f"u-h{i}", "master", "br0", "up")
            sh("ip", "-n", host, "addr", "add", f"192.0.2.{i}/24", "dev", "eth0")
            sh("ip", "-n", host, "link", "set", "eth0", "up")
            sh("ip", "-n", host, "route", "add", "224.0.0.0/4", "dev", "eth0")
        startup = os.path.join(self.work, "vnets.sxp")
        with open(startup, "w") as f:
            f.write(f"(vnet.add (id {VNET}))\n")
        env = dict(os.environ, PYTHONPATH=REPO)
        env.pop("VNETD_SOCKET", None)
        for i, host in enumerate(self.hosts, 1):
            with open(os.path.join(self.work, f"h{i}.log"), "wb") as log:
                self.engines.append(subprocess.Popen(
                    ["ip", "netns", "exec", host, sys.executable, "-m",
                     "xend_vnet.kernel_shim.daemon", "--control", self.controls[i - 1],
                     "--no-default-vnets", "--device", "eth0", "-f", startup],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                    cwd=REPO, start_new_session=True))
        self.wait_engines()
        for i, (host, dom) in enumerate(zip(self.hosts, self.domains), 1):
            sh("ip", "-n", host, "link", "add", "vnbr97", "type", "bridge", "forward_delay", "0")
            sh("ip", "-n", host, "link", "set", "vnbr97", "up")
            sh("ip", "-n", host, "link", "set", TAP, "master", "vnbr97", "up")
            self.netns(dom)
            sh("ip", "link", "add", "eth0", "netns", dom, "type", "veth", "peer", "name",
               "vif-d", "netns", host)
            sh("ip", "-n", dom, "link", "set", "eth0", "address", f"02:97:00:00:00:{i:02x}")
            sh("ip", "-n", dom, "addr", "add", f"10.97.0.{i}/24", "dev", "eth0")
            sh("ip", "-n", dom, "link", "set", "eth0", "up")
            sh("ip", "-n", host, "link", "set", "vif-d", "master", "vnbr97", "up")

    def wait_engines(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for i, p in enumerate(self.engines):
                if p.poll() is not None:
                    raise RuntimeError(f"vnetd in {self.hosts[i]} exited {p.returncode}: "
                                       f"{self.log(i)}")
            ok = [isinstance(s, dict) and s["joined"] == "yes" for s in self.snapshot()]
            if all(ok):
                return
            if time.monotonic() > deadline:
                bad = [h for h, good in zip(self.hosts, ok) if not good]
                raise RuntimeError(f"engines not ready after {timeout:g} s: {bad}")
            time.sleep(0.5)

    def log(self, i: int) -> str:
        try:
            with open(os.path.join(self.work, f"h{i + 1}.log"), errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def snapshot(self) -> list:
        return in_namespaces([(h, _snapshot, (c,)) for h, c in zip(self.hosts, self.controls)])

    def cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.engines)

    def load(self, bursts: int, pings: int) -> dict:
        """Every domain: ``bursts`` broadcasts, then 2 pings to each of ``pings``
        domains on other hosts (i+1, i+2, ... around the ring)."""
        n = self.n
        for _ in range(bursts):
            for r in in_namespaces([(d, _broadcast, (1, 0.0)) for d in self.domains]):
                if isinstance(r, Exception):
                    raise r
            time.sleep(0.05)
        time.sleep(0.5)
        sent = replies = 0
        for k in range(1, min(pings, n - 1) + 1):
            round_procs = []
            for i, dom in enumerate(self.domains):
                target = f"10.97.0.{(i + k) % n + 1}"
                p = subprocess.Popen(["ip", "netns", "exec", dom, "ping", "-n", "-q", "-c", "2",
                                      "-i", "0.2", "-W", "2", target],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, start_new_session=True)
                self.procs.append(p)
                round_procs.append(p)
            for p in round_procs:
                out, _ = p.communicate(timeout=30)
                for line in out.splitlines():
                    if "packets transmitted" in line:
                        words = line.replace(",", "").split()
                        sent += int(words[0])
                        replies += int(words[3])
        return {"ping_sent": sent, "ping_replies": replies}

    def _delete_namespace(self, ns: str) -> None:
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                              text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def close(self) -> None:
        for p in self.engines:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.engines:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        for ns in reversed(self.made):
            self._delete_namespace(ns)
        self.made.clear()
        shutil.rmtree(self.work, ignore_errors=True)


def _delta(after: dict, before: dict) -> dict:
    def d(a, b):
        return {k: a[k] - b.get(k, 0) for k in a} if isinstance(a, dict) else a - b
    return {
        "engine": {k: d(v, before["engine"].get(k, {} if isinstance(v, dict) else 0))
                   for k, v in after["engine"].items()},
        "vnet": {k: d(v, before["vnet"].get(k, {} if isinstance(v, dict) else 0))
                 for k, v in after["vnet"].items() if not isinstance(v, str)},
        "in_mcast": after["in_mcast"] - before["in_mcast"],
        "out_mcast": after["out_mcast"] - before["out_mcast"],
    }


def _spread(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def run_engines(n: int, bursts: int, pings: int, quiet: float, prefix: str) -> dict:
    lab = EngineLab(n, prefix)
    try:
        t0 = time.monotonic()
        lab.build()
        build_s = time.monotonic() - t0
        time.sleep(2.0)         # IGMP reports of the joins are over before the baseline
        before = lab.snapshot()
        c_start = lab.cpu()
        t_load = time.monotonic()
        pinged = lab.load(bursts, pings)
        time.sleep(1.0)
        after = lab.snapshot()
        load_s = time.monotonic() - t_load
        c_load = lab.cpu()
        time.sleep(quiet)
        final = lab.snapshot()
        c_quiet = lab.cpu()
        for s in (*before, *after, *final):
            if isinstance(s, Exception):
                raise s
        load = [_delta(a, b) for a, b in zip(after, before)]
        still = [_delta(f, a) for f, a in zip(final, after)]
        floods = [x["vnet"]["flooded"] for x in load]
        announces = [x["vnet"]["announced"] for x in load]
        group_tx = [f + a for f, a in zip(floods, announces)]
        hosts = []
        for i, x in enumerate(load):
            others_floods = sum(floods) - floods[i]
            others_ann = sum(announces) - announces[i]
            group_rx = x["in_mcast"]
            rx_varp = x["engine"]["rx_varp"]
            hosts.append({
                "host": lab.hosts[i],
                "floods_sent": floods[i],
                "announces_sent": announces[i],
                "tx_datagrams": x["engine"]["tx_datagrams"],
                "group_rx": group_rx,
                "rx_datagrams": x["engine"]["rx_datagrams"],
                "rx_data": x["engine"]["rx_data"],
                "rx_varp": rx_varp,
                "rx_dropped": sum(x["engine"]["rx_dropped"].values()),
                "vnet_dropped": sum(x["vnet"]["dropped"].values()),
                "flood_ratio": (group_rx - rx_varp) / others_floods if others_floods else None,
                "announce_ratio": rx_varp / others_ann if others_ann else None,
                "group_ratio": group_rx / (sum(group_tx) - group_tx[i]),
                "group_tx_kernel": x["out_mcast"],
                "quiet_group_rx": still[i]["in_mcast"],
                "quiet_group_tx": still[i]["vnet"]["flooded"] + still[i]["vnet"]["announced"],
                "quiet_tx_datagrams": still[i]["engine"]["tx_datagrams"],
                "quiet_rx_datagrams": still[i]["engine"]["rx_datagrams"],
                "quiet_rx_data": still[i]["engine"]["rx_data"],
                "quiet_rx_varp": still[i]["engine"]["rx_varp"],
                "drop_reasons": x["engine"]["rx_dropped"],
            })
        return {
            "engines": n, "bursts": bursts, "pings": pings, "quiet_s": quiet,
            "build_s": build_s, "load_s": load_s, **pinged,
            "floods_total": sum(floods), "announces_total": sum(announces),
            "group_tx_total": sum(group_tx),
            "quiet_group_rx_total": sum(h["quiet_group_rx"] for h in hosts),
            "quiet_group_tx_total": sum(h["quiet_group_tx"] for h in hosts),
            "quiet_tx_total": sum(h["quiet_tx_datagrams"] for h in hosts),
            "load_cpu_s": c_load - c_start,
            "quiet_cpu_percent": 100 * (c_quiet - c_load) / quiet if quiet else None,
            "hosts": hosts,
        }
    finally:
        lab.close()


def _cell(value, fmt: str) -> str:
    if value is None:
        return f"{'-':>9}"
    if fmt == "d" and not float(value).is_integer():
        fmt = ".1f"
    return f"{value:>9{fmt if fmt != 'd' else '.0f'}}"


def print_engines(r: dict) -> None:
    n = r["engines"]
    print(f"# {n} engines on one link, one vnet; load: {r['bursts']} broadcasts per domain, "
          f"2 pings to each of {r['pings']} other domains; quiet {r['quiet_s']:g} s")
    print(f"setup {r['build_s']:.1f} s, load {r['load_s']:.1f} s; pings "
          f"{r['ping_replies']}/{r['ping_sent']} answered; floods sent {r['floods_total']}, "
          f"announces sent {r['announces_total']}, group datagrams sent {r['group_tx_total']}")
    rows = [
        ("floods sent", "floods_sent", "d"),
        ("announces sent", "announces_sent", "d"),
        ("group datagrams sent (kernel)", "group_tx_kernel", "d"),
        ("datagrams sent (all)", "tx_datagrams", "d"),
        ("group datagrams received", "group_rx", "d"),
        ("announces received", "rx_varp", "d"),
        ("data received (all)", "rx_data", "d"),
        ("dropped", "rx_dropped", "d"),
        ("floods rx / others' floods", "flood_ratio", ".3f"),
        ("announces rx / others'", "announce_ratio", ".3f"),
        ("group rx / others' group tx", "group_ratio", ".3f"),
        ("quiet: group datagrams sent", "quiet_group_tx", "d"),
        ("quiet: group datagrams rx", "quiet_group_rx", "d"),
        ("quiet: datagrams sent (all)", "quiet_tx_datagrams", "d"),
    ]
    print(f"{'per host':30} {'min':>9} {'median':>9} {'max':>9}")
    for label, key, fmt in rows:
        s = _spread([h[key] for h in r["hosts"]])
        print(f"{label:30} " + " ".join(_cell(s[k], fmt) for k in ("min", "median", "max")))
    print(f"quiet {r['quiet_s']:g} s, all hosts: {r['quiet_group_tx_total']} group datagrams "
          f"sent, {r['quiet_group_rx_total']} received; {r['quiet_tx_total']} datagrams sent "
          f"in all; engine CPU "
          f"{r['quiet_cpu_percent']:.2f} % of one core for all {n} "
          f"({r['quiet_cpu_percent'] / n:.3f} % each); load CPU {r['load_cpu_s']:.2f} s")


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")     # the finally clauses clean up


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vnets", type=int, default=1000)
    p.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU measured")
    p.add_argument("--engines", type=int, default=0, metavar="N",
                   help="instead: N engines on one link, one vnet, flood and VARP traffic")
    p.add_argument("--bursts", type=int, default=3,
                   help="--engines: UDP broadcasts per domain (default 3)")
    p.add_argument("--pings", type=int, default=2,
                   help="--engines: other domains each domain pings twice (default 2)")
    p.add_argument("--quiet", type=float, default=10.0,
                   help="--engines: seconds without load that must carry no group traffic")
    p.add_argument("--prefix", default="xvs-", help="--engines: namespace name prefix")
    p.add_argument("--json", metavar="FILE")
    opts = p.parse_args(argv)
    if os.geteuid() != 0:
        print("scale.py: needs root (network namespaces)", file=sys.stderr)
        return 1
    if opts.engines and not 2 <= opts.engines <= 200:
        p.error("--engines: 2 to 200")
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        r = (run_engines(opts.engines, opts.bursts, opts.pings, opts.quiet, opts.prefix)
             if opts.engines else run(opts.vnets, opts.idle))
    except KeyboardInterrupt:
        print("scale.py: interrupted; everything it made is removed", file=sys.stderr)
        return 130
    if opts.engines:
        print_engines(r)
    else:
        print(f"# {r['vnets']} vnets on one engine")
        print(f"vnet.add: median {r['add_median_ms']:.1f} ms, 95th percentile "
              f"{r['add_p95_ms']:.1f} ms, {r['add_total_s']:.1f} s in all")
        print(f"memory: {r['rss_base_kib'] / 1024:.1f} MiB without vnets, "
              f"{r['rss_full_kib'] / 1024:.1f} MiB with them: {r['rss_per_vnet_kib']:.1f} KiB "
              "per vnet")
        print(f"idle CPU with all of them: {r['idle_cpu_percent']:.2f} %")
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
