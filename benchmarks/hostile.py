#!/usr/bin/env python3
"""The engine under attack, measured: what hostile traffic costs vnetd.

Builds, in network namespaces named ``xhb-*`` (hostile_bed.py), a LAN with
two hosts running vnetd (started from this repository, default vnets 2, 3
and 4, vnet 99 with a domain on each host, the auth vnet 9a; a peer off
the LAN for the VFWD kind only), and an attacker host on the same LAN
that also owns a TAP on host 1's vnet 99 bridge (a domain gone bad).
Then, for each kind of hostile traffic (hostile_packets.py; ``--kinds``),
on freshly started engines:

  varp         forged VARP announces (our capability trailer), fresh MACs and
               care-of addresses, to vnets 2, 3, 4 and 99 (protocol.md 3.3)
  data         forged clear data frames from fresh source MACs (protocol.md 4.2)
  random       random datagrams to port 1798
  segments     unsolicited id-5 segments: random frame ids, a virtio_net_hdr
               no TAP takes (protocol.md 2)
  vfwd         a VFWD flood from a spoofed peer address (protocol.md 7)
  secure       forged secured packets (id 4) with the vnet's SPI and a random
               tag (design.md 7)
  domain-gso   a domain's TCP super-frames with gso_size 1
  domain-macs  a domain sending broadcasts from fresh MACs

the attacker sends at ``--rate`` packets a second (as many sender processes
as that needs; the rate really achieved is what the table shows) for
``--seconds``.  The first part of the attack, the attack alone, gives the
engines' CPU (/proc/PID/stat, both engines) and the host's (/proc/stat)
per 1,000 packets a second; during the last part, domain 1 pings domain 2
(``--pings`` at 0.05 s: loss and median round trip) and sends TCP to it
(iperf3, ``--iperf-seconds``; as a ratio to the unattacked baseline of the
same run).  All along, ``(engine.status)`` is timed on both control sockets
(what ``vn status`` waits), and the engines' resident memory is read before
and after.  If the engines report their table sizes and bounds in
``engine.status``, the attack also ends once every table is full.  The
drop counters that grew (``vnet.stats``, ``engine.status``, and the hosts'
UDP receive-buffer errors) are listed per kind.

Nothing leaves the bed: forged addresses are TEST-NET or 10.x, no namespace
has a default route, every link is checked to stay among the bed's
namespaces, and a capture in this namespace counts packets with the bed's
addresses (a loopback canary shows it was live); any such packet fails the
run.  Everything it creates is removed on exit, also on failure or Ctrl-C;
one benchmark at a time (the lock of throughput.py).  Needs root, iproute2,
tcpdump, iperf3, ping and psutil.

The figures of docs/performance.md come from the defaults (``--seconds
120``, about 20 minutes for every kind); ``--seconds 10`` is a smoke run:

    python3 benchmarks/hostile.py [--kinds varp,data,...] [--rate 5000]
                                  [--seconds 120] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import sys
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from hostile_bed import (  # noqa: E402
    ATK, D1, D2, DOMAINS, H1, H2, HOSTS, INJECTOR, BenchError, HostileBed, cpu_ticks,
    host_ticks, in_ns, sh)
import throughput  # noqa: E402  -- the machine facts every benchmark prints
from hostile_packets import KINDS  # noqa: E402
from hostile_report import all_at_bound, flat_counters, grown, parse_ping, per_kpps, table  # noqa: E402

from xend_vnet import sxp  # noqa: E402

SENDER_RATE = 20000        # packets a second one sender process is asked for at most
TICK = os.sysconf("SC_CLK_TCK")


def counters(bed: HostileBed) -> dict[str, int]:
    """Both engines' counters summed, and the hosts' UDP receive-buffer errors."""
    total: dict[str, int] = {"kernel/rcvbuf_errors": bed.rcvbuf_errors()}
    for host in (H1, H2):
        stats = sxp.parse_all(bed.ask(host, "(vnet.stats)"))
        status = sxp.parse_all(bed.ask(host, "(engine.status)"))
        for k, v in flat_counters(stats, status[0][1:] if status else []).items():
            total[k] = total.get(k, 0) + v
    return total


def rss_mib(bed: HostileBed) -> dict[str, float]:
    return {h: psutil.Process(bed.engine_pid(h)).memory_info().rss / 2**20 for h in (H1, H2)}


def cpu_sample(bed: HostileBed) -> tuple[float, int, int, int]:
    """(monotonic time, engines' ticks, host busy ticks, host total ticks)."""
    busy, total = host_ticks()
    return (time.monotonic(), sum(cpu_ticks(bed.engine_pid(h)) for h in (H1, H2)),
            busy, total)


def cpu_figures(a: tuple, b: tuple) -> dict:
    """Engines' and host's CPU between two samples, in percent of one core."""
    wall = b[0] - a[0]
    ncpu = os.cpu_count() or 1
    host = 100.0 * ncpu * (b[2] - a[2]) / max(1, b[3] - a[3])
    return {"cpu_window_s": wall, "engine_cpu_percent": 100.0 * (b[1] - a[1]) / TICK / wall,
            "host_cpu_percent": host}


def start_senders(bed: HostileBed, kind: str, opts: argparse.Namespace, seconds: float
                  ) -> list[tuple]:
    """The attacker's processes for ``kind``: (process, report path) each."""
    source = KINDS[kind][0]
    n = 1 if source == "tap" else (opts.senders or math.ceil(opts.rate / SENDER_RATE))
    ns = H1 if source == "tap" else ATK
    out = []
    for k in range(n):
        report = os.path.join(bed.workdir, f"send-{kind}-{k}.json")
        argv = bed.sender_argv(ns, "send", "--kind", kind, "--rate", f"{opts.rate / n:g}",
                               "--seconds", f"{seconds:g}", "--sender", str(k),
                               "--seed", str(opts.seed), "--report", report,
                               "--bind", HOSTS[ATK], "--tap", INJECTOR,
                               "--key-file", bed.key_file)
        out.append((bed.start(argv, f"send-{kind}-{k}"), report))
    return out


def sender_results(senders: list[tuple]) -> dict:
    reports = []
    for _, path in senders:
        try:
            with open(path) as f:
                reports.append(json.load(f))
        except (OSError, ValueError) as e:
            raise BenchError(f"a sender wrote no report ({path}: {e}); its output is "
                             f"{path[:-5]}.out") from None
    failed: dict[str, int] = {}
    for r in reports:
        for name, n in r["failed"].items():
            failed[name] = failed.get(name, 0) + n
    return {"senders": len(reports),
            "achieved_rate": sum(r["sent"] / r["seconds"] for r in reports if r["seconds"]),
            "sent": sum(r["sent"] for r in reports), "send_failed": failed,
            "skipped": sum(r["skipped"] for r in reports)}


def start_pollers(bed: HostileBed, tag: str) -> list[tuple]:
    out = []
    for host in (H1, H2):
        path = os.path.join(bed.workdir, f"poll-{tag}-{host}.jsonl")
        argv = bed.sender_argv(host, "poll", "--control",
                               os.path.join(bed.workdir, f"{host}.sock"), "--out", path)
        out.append((bed.start(argv, f"poll-{tag}-{host}"), path))
    return out


def poll_lines(path: str) -> list[dict]:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.endswith("\n")]
    except (OSError, ValueError):
        return []


def tables_full(pollers: list[tuple]) -> bool:
    """Whether both engines report every table at its bound (False when unreported)."""
    last = [poll_lines(path)[-1:] for _, path in pollers]
    return all(lines and all_at_bound(lines[0].get("tables") or {}) for lines in last)


def status_figures(pollers: list[tuple]) -> dict:
    lines = [line for _, path in pollers for line in poll_lines(path)]
    ms = [line["ms"] for line in lines]
    tables = [line.get("tables") for line in lines if line.get("tables")]
    return {"status_samples": len(ms),
            "status_errors": sum(1 for line in lines if "error" in line),
            "status_median_ms": statistics.median(ms) if ms else None,
            "status_max_ms": max(ms) if ms else None,
            "tables": tables[-1] if tables else {}}


def legitimate(bed: HostileBed, opts: argparse.Namespace) -> dict:
    """Domain 1 to domain 2: ping, then TCP (iperf3)."""
    addr = DOMAINS[D2][1]
    done = sh(*in_ns(D1, "ping", "-c", str(opts.pings), "-i", "0.05", "-W", "2", addr),
              check=False, timeout=opts.pings * 0.05 + 60)
    out = parse_ping(done.stdout)
    done = sh(*in_ns(D1, "iperf3", "-c", addr, "-t", f"{opts.iperf_seconds:g}", "-J",
                     "--connect-timeout", "5000"),
              check=False, timeout=opts.iperf_seconds + 60)
    try:
        result = json.loads(done.stdout)
    except ValueError:
        result = {"error": done.stderr.strip() or "no output"}
    if "error" in result:
        out.update(tcp_bits_per_second=0.0, iperf_error=result["error"])
    else:
        out["tcp_bits_per_second"] = result["end"]["sum_received"]["bits_per_second"]
    return out


def legit_seconds(opts: argparse.Namespace) -> float:
    return opts.pings * 0.05 + opts.iperf_seconds + 2.0


def wait_until(deadline: float, pollers: list[tuple]) -> None:
    """Sleep until ``deadline``, or until both engines report every table full."""
    while time.monotonic() < deadline:
        if tables_full(pollers):
            return
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def run_kind(bed: HostileBed, kind: str | None, opts: argparse.Namespace) -> dict:
    """One kind on fresh engines (None: the unattacked baseline)."""
    tag = kind or "baseline"
    bed.start_engines(tag, peer=kind == "vfwd")
    try:
        before, rss_before = counters(bed), rss_mib(bed)
        pollers = start_pollers(bed, tag)
        window = max(2.0, opts.seconds - legit_seconds(opts))
        senders = []
        if kind:
            senders = start_senders(bed, kind, opts, window + legit_seconds(opts) + 60)
        else:
            window = min(window, 5.0)
        start = time.monotonic()
        a = cpu_sample(bed)
        wait_until(start + window, pollers)
        result = cpu_figures(a, cpu_sample(bed))
        result.update(legitimate(bed, opts))
        if kind:
            wait_until(start + opts.seconds, pollers)
        bed.stop([p for p, _ in senders])
        result["attack_seconds"] = time.monotonic() - start
        after, rss_after = counters(bed), rss_mib(bed)
        bed.stop([p for p, _ in pollers])
        result.update(status_figures(pollers))
        result.update(rss_before=rss_before, rss_after=rss_after,
                      rss_before_mib=sum(rss_before.values()),
                      rss_after_mib=sum(rss_after.values()),
                      drops=grown(before, after), counters_grown=grown(before, after, False))
        if kind:
            result.update(sender_results(senders), asked_rate=opts.rate, kind=KINDS[kind][1])
        return result
    finally:
        bed.stop_engines()


def add_ratios(baseline: dict, results: dict) -> None:
    rate = baseline["tcp_bits_per_second"]
    for r in results.values():
        r["tcp_ratio"] = r["tcp_bits_per_second"] / rate if rate else None
        achieved = r.get("achieved_rate", 0.0)
        r["engine_cpu_per_kpps"] = per_kpps(r["engine_cpu_percent"], achieved)
        r["host_cpu_per_kpps"] = per_kpps(r["host_cpu_percent"] - baseline["host_cpu_percent"],
                                          achieved)


def machine() -> dict:
    return {**throughput.machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def measure_all(bed: HostileBed, opts: argparse.Namespace) -> dict:
    baseline = run_kind(bed, None, opts)
    kinds = {}
    for kind in opts.kinds:
        print(f"# {kind} ...", file=sys.stderr, flush=True)
        kinds[kind] = run_kind(bed, kind, opts)
    again = run_kind(bed, None, opts) if opts.again else None
    add_ratios(baseline, {"baseline": baseline, **kinds, **({"again": again} if again else {})})
    leaks, problems = bed.finish()
    return {"baseline": baseline, "kinds": kinds, "again": again, "leaks": leaks,
            "isolation_problems": problems}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="The figures in docs/performance.md are from --seconds 120, the default "
               "(every kind: about 20 minutes); --seconds 10 makes a smoke run.")
    p.add_argument("--kinds", default=",".join(KINDS),
                   help="kinds of hostile traffic, comma-separated (default: all: "
                        "%(default)s)")
    p.add_argument("--rate", type=float, default=5000.0,
                   help="packets a second asked of the attacker (default 5000)")
    p.add_argument("--seconds", type=float, default=120.0,
                   help="attack time per kind (default 120, as the documented figures; "
                        "10 for a smoke run)")
    p.add_argument("--pings", type=int, default=200, help="pings during each attack, "
                   "0.05 s apart (default 200)")
    p.add_argument("--iperf-seconds", type=float, default=10.0,
                   help="iperf3 TCP time during each attack (default 10)")
    p.add_argument("--senders", type=int, default=0,
                   help=f"sender processes per kind (default: one per {SENDER_RATE} "
                        "packets a second asked; a TAP takes one)")
    p.add_argument("--seed", type=int, default=1, help="seed of the random packets")
    p.add_argument("--no-again", dest="again", action="store_false",
                   help="skip the second unattacked baseline after the last kind")
    p.add_argument("--json", metavar="FILE", help="write every figure here")
    opts = p.parse_args(argv)
    opts.kinds = [k for k in opts.kinds.split(",") if k]
    unknown = [k for k in opts.kinds if k not in KINDS]
    if unknown:
        p.error(f"unknown kind {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    if opts.rate <= 0 or opts.seconds <= 0 or opts.pings < 1:
        p.error("--rate and --seconds must be above 0, --pings at least 1")
    return opts


def report(results: dict, opts: argparse.Namespace, info: dict, argv: list[str]) -> str:
    b = results["baseline"]
    lines = [
        f"# {info['date']}: {' '.join(['benchmarks/hostile.py', *argv])}",
        f"# {info['nproc']} CPUs, {info['cpu']}, Linux {info['kernel']}, "
        f"Python {info['python']}, {info['iperf3']}",
        f"# attack {opts.seconds:g} s per kind on fresh engines; {opts.pings} pings at "
        f"0.05 s and iperf3 {opts.iperf_seconds:g} s during its last part",
        f"# baseline: TCP {b['tcp_bits_per_second'] / 1e9:.3f} Gbit/s, host CPU idle "
        f"{b['host_cpu_percent']:.1f} % of a core (subtracted in host%/k)",
        table(b, results["kinds"], results["again"]),
        f"# packets with the bed's addresses seen outside it: {len(results['leaks'])}",
    ]
    lines += [f"#   {line}" for line in results["leaks"][:10]]
    lines += [f"# isolation problem: {p}" for p in results["isolation_problems"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    opts = parse_args(argv)
    if os.geteuid() != 0:
        print("hostile.py: needs root (network namespaces)", file=sys.stderr)
        return 1
    for tool in ("ip", "iperf3", "ping", "tcpdump"):
        if shutil.which(tool) is None:
            print(f"hostile.py: {tool} is not installed", file=sys.stderr)
            return 1
    info = machine()
    bed = HostileBed()
    # SIGTERM and SIGHUP end the run through the same clean-up as Ctrl-C.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(1))
    try:
        bed.build()
        results = measure_all(bed, opts)
    except BenchError as e:
        print(f"hostile.py: {e}", file=sys.stderr)
        return 1
    finally:
        bed.cleanup()
    print(report(results, opts, info, argv))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"machine": info, "argv": argv, "options": vars(opts), **results},
                      f, indent=2)
    if results["leaks"] or results["isolation_problems"]:
        print("hostile.py: FAILED: traffic could leave the test bed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
