#!/usr/bin/env python3
"""Scale of one engine: many vnets on one host (issue 7, target 6).

Starts one vnetd in a network namespace named ``xvs-h1`` (with an underlay
veth so it has an address and the group), adds ``--vnets`` vnets one by one
through the control socket, and reports the time per ``vnet.add`` (median
and 95th percentile), the engine's resident memory per vnet, and its CPU
use while idle with all of them (``--idle`` seconds).  Everything it
creates is removed on exit.  Needs root and iproute2.

    python3 benchmarks/scale.py [--vnets 1000] [--idle 10] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vnets", type=int, default=1000)
    p.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU measured")
    p.add_argument("--json", metavar="FILE")
    opts = p.parse_args(argv)
    if os.geteuid() != 0:
        print("scale.py: needs root (network namespaces)", file=sys.stderr)
        return 1
    r = run(opts.vnets, opts.idle)
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
