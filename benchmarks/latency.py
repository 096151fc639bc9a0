"""Where a ping's round trip goes through two vnetd engines, stage by stage.

Builds the test bed of throughput.py (two hosts on a veth underlay, one
domain each on the vnet 99 bridge), starts both engines with the options of
one phase, captures with tcpdump at the domain's port, the TAP and the
underlay of host 1 and at the TAP of host 2, pings domain 2 from domain 1,
and prints the median time of each stage: the kernel's own hops, and each
engine's turn from the packet reaching it to its datagram or frame leaving
(which includes waking the engine when it slept).  All timestamps come
from the kernel's capture clock of one machine, so they compare.

    sudo python3 benchmarks/latency.py [--phase plain] [--pings 40]
"""

from __future__ import annotations

import argparse
import bisect
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import throughput as bench  # noqa: E402  -- the same test bed

STAGES = ("domain 1 to TAP 1", "engine 1, request", "underlay and engine 2, request",
          "domain 2 answers", "engine 2, reply", "underlay and engine 1, reply",
          "TAP 1 to domain 1", "round trip")


def capture(ns: str, dev: str, path: str) -> subprocess.Popen:
    with open(path, "w") as out:
        return subprocess.Popen(
            [*bench.in_ns(ns, "tcpdump", "-i", dev, "-n", "-tt", "-l",
                          "icmp or (udp port 1798 and not host 224.10.0.1)")],
            stdout=out, stderr=subprocess.DEVNULL)


def icmp_times(path: str, kind: str) -> dict[str, float]:
    out = {}
    with open(path) as f:
        for line in f:
            m = re.search(r"ICMP echo " + kind + r", id \d+, seq (\d+)", line)
            if m:
                out[m.group(1)] = float(line.split()[0])
    return out


def udp_times(path: str, source: str) -> tuple[list[float], list[float]]:
    """Times of datagrams from ``source`` and to it, sorted."""
    sent, received = [], []
    with open(path) as f:
        for line in f:
            if " UDP" not in line or not line[:1].isdigit():
                continue
            (sent if f" {source}.1798 >" in line else received).append(float(line.split()[0]))
    return sorted(sent), sorted(received)


def stages(files: dict[str, str]) -> dict[str, list[float]]:
    d1q, d1p = icmp_times(files["d1"], "request"), icmp_times(files["d1"], "reply")
    t1q, t1p = icmp_times(files["tap1"], "request"), icmp_times(files["tap1"], "reply")
    t2q, t2p = icmp_times(files["tap2"], "request"), icmp_times(files["tap2"], "reply")
    out_u1, in_u1 = udp_times(files["u1"], bench.UNDERLAY[bench.H1][1])
    result: dict[str, list[float]] = {s: [] for s in STAGES}
    for seq, a in d1q.items():
        try:
            b, d, e, g, h = t1q[seq], t2q[seq], t2p[seq], t1p[seq], d1p[seq]
        except KeyError:
            continue               # lost, or not seen at every point
        i, j = bisect.bisect_left(out_u1, b), bisect.bisect_left(in_u1, e)
        if i == len(out_u1) or j == len(in_u1):
            continue
        c, f = out_u1[i], in_u1[j]
        if not (a <= b <= c <= d <= e <= f <= g <= h):
            continue
        for name, span in zip(STAGES, (b - a, c - b, d - c, e - d, f - e, g - f, h - g, h - a)):
            result[name].append(span * 1e6)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--phase", default="plain", choices=sorted(bench.PHASES),
                   help="engine options, as throughput.py's phases (default %(default)s)")
    p.add_argument("--pings", type=int, default=40, help="pings, 0.05 s apart")
    opts = p.parse_args(argv)
    if os.geteuid() != 0:
        print("latency.py: needs root (network namespaces)", file=sys.stderr)
        return 1
    for tool in ("ip", "ping", "tcpdump", "iperf3"):
        if shutil.which(tool) is None:
            print(f"latency.py: {tool} is not installed", file=sys.stderr)
            return 1
    bed = bench.Testbed(1500, None)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(1))
    captures = []
    files = {}
    try:
        bed.build()
        bed.start_engines(opts.phase)
        points = {"d1": (bench.H1, "xvb-d1vn"), "tap1": (bench.H1, "vnif0099"),
                  "u1": (bench.H1, bench.UNDERLAY[bench.H1][0]),
                  "tap2": (bench.H2, "vnif0099")}
        for name, (ns, dev) in points.items():
            files[name] = os.path.join(bed.workdir, f"capture-{name}.txt")
            captures.append(capture(ns, dev, files[name]))
        time.sleep(1.5)            # tcpdump is listening
        ping = bench.sh(*bench.in_ns(bench.D1, "ping", "-c", str(opts.pings), "-i", "0.05",
                                     "10.99.0.2"), check=False).stdout
        time.sleep(0.5)
    except bench.BenchError as e:
        print(f"latency.py: {e}", file=sys.stderr)
        return 1
    finally:
        for c in captures:
            c.terminate()
            c.wait(5)
        result = stages(files) if files else {}
        bed.cleanup()
    print(f"# {bench.PHASES[opts.phase][1]}: {opts.pings} pings at 0.05 s; "
          + (ping.strip().splitlines() or ["no ping output"])[-1])
    print(f"{'stage':34} {'median us':>10} {'25%':>8} {'75%':>8}")
    for name, spans in result.items():
        if len(spans) < 2:
            print(f"{name:34} {'-':>10}")
            continue
        q1, _, q3 = statistics.quantiles(spans, n=4)
        print(f"{name:34} {statistics.median(spans):10.0f} {q1:8.0f} {q3:8.0f}")
    print(f"# {len(result.get('round trip', []))} of {opts.pings} pings seen at every point")
    return 0


if __name__ == "__main__":
    sys.exit(main())
