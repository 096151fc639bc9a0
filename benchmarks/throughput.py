#!/usr/bin/env python3
"""Throughput and latency of a vnet against plain veth and kernel VXLAN.

Builds the test bed of throughput_bed.py (``xvb-*`` namespaces: two hosts
on a veth underlay, 192.0.2.1 and 192.0.2.2, one domain each, one bridge
per vnet in each host), then, for

  veth   the underlay itself, host to host (the baseline),
  vxlan  domain to domain through kernel VXLAN (id 42, UDP 4789),
  plain-tap  domain to domain through two vnetd engines started with
         ``--no-tap-offload`` (vnet 99, UDP 1798): one frame per TAP read,
         per datagram and per TAP write, as the legacy daemon works,
  plain-tap-auth, plain-tap-conf  the same through secured vnets 9a
         (auth) and 9b (conf) of the same engines (docs/security.md),
  plain, plain-auth, plain-conf  the same with ``--no-offload``: the
         legacy-compatible path, one frame per datagram, what legacy hosts
         get from our engine's user space,
  fast, fast-auth, fast-conf  the same after restarting both engines with
         offloads (the default: TAP offloads, fast framing, UDP_SEGMENT/GRO),
         every user-space phase pinned to ``--no-kernel-path``,
  kernel vxlan data path  vnet 9c with ``(data-path vxlan)`` (10.156.0.0/24):
         the engines put the kernel's VXLAN device on its bridge
         (docs/vxlan.md); measured once, during the first phase,
  kernel both engines with the kernel data path (TC eBPF programs carrying
         the known unicast of clear vnets on the legacy wire), loading it
         required: vnet 99 at the domain MTU of ``--vnet-mtu`` and vnet 9d
         at 1436, with kernel VXLAN, in turns; the three again with the
         underlay's transmit offloads off (``ethtool -K tx off`` in both
         hosts: a NIC without tunnel offloads); 200 pings each,
  naive  a naive CPython TAP-to-UDP forwarder (naive_forwarder.py: a read
         and a sendto per frame, nothing else) on vnet 99's TAP: the floor
         of any CPython engine on this machine, ping round trip included,
  legacy the legacy C vnetd, when ``--legacy-vnetd PATH`` is given: in both
         hosts (legacy to legacy), then host 1 our engine with the kernel
         path and host 2 the legacy daemon (mixed), each at both MTUs and
         with the offloads on and off, iperf3 both ways; the daemon is
         switched in host 1 every run so the two take their samples in turns,

it runs iperf3 (TCP, one stream) and ping, ``--runs`` times each, and prints
the medians with their ratios to the baseline and to kernel VXLAN, and the
UDP receive-buffer errors of both hosts during each path's runs.  Paths
measured together take their samples in turns, so the drift of a shared
machine weighs on each alike and their ratios are fair.  During every
kernel-path and mixed sample it captures the underlay (tcpdump, at most
``--capture-packets`` per capture; toward the legacy daemon on its host)
and reads the engines' kernel counters: the rows are honest when the
legacy framing is on the wire and at least 99 % of the data frames took
the kernel path; toward the legacy daemon, no frame may arrive with an
incomplete checksum (capture_check.py).  The targets are printed last,
each with PASS or FAIL.  Everything it creates is removed on exit, also on
failure or Ctrl-C.  Needs root, iproute2, iperf3, ping, and for the kernel
rows ethtool and tcpdump.  The benchmark uses those tools itself; the
product never does.

    python3 benchmarks/throughput.py [--runs 3] [--seconds 5] [--json FILE]
                                     [--vnet-mtu 1500] [--profile PREFIX]
                                     [--phases plain-tap,plain,fast,kernel,naive]
                                     [--legacy-vnetd PATH [--legacy-args ARGS]]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
from typing import NamedTuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The test bed and the plumbing other benchmarks take from here.
from throughput_bed import D1, D2, H1, H2, NARROW_MTU, NARROW_VNET, VNETS, VXLAN_MTU  # noqa: E402
from throughput_bed import KERNEL, KERNEL_LABEL, UNDERLAY  # noqa: E402
from throughput_bed import LOCK_PATH as LOCK_PATH  # noqa: E402
from throughput_bed import PHASES as PHASES  # noqa: E402
from throughput_bed import BenchError as BenchError  # noqa: E402
from throughput_bed import Testbed as Testbed  # noqa: E402
from throughput_bed import in_ns as in_ns  # noqa: E402
from throughput_bed import machine as machine  # noqa: E402
from throughput_bed import rcvbuf_errors as rcvbuf_errors  # noqa: E402
from throughput_bed import sh as sh  # noqa: E402
from throughput_bed import take_lock as take_lock  # noqa: E402
from throughput_bed import wait_for as wait_for  # noqa: E402
from throughput_report import NAIVE, kernel_frames, summarize, table, targets  # noqa: E402


class Watch(NamedTuple):
    """What to watch while a path is sampled: a capture of ``capture``'s
    underlay counting datagrams from ``sources``, and the kernel counters of
    vnet ``vnet`` in the engines of ``engines``.  ``checksums``: the frames'
    checksums are judged (toward a legacy host; between our engines a frame
    may leave with its checksum for the underlay's device to fill, which the
    receiving kernel trusts)."""

    capture: str
    sources: tuple
    engines: tuple
    vnet: str
    checksums: bool = False


class Path(NamedTuple):
    """One row: iperf3 and ping from ``client`` to ``addr`` (in ``server``)."""

    name: str
    label: str
    client: str
    server: str
    addr: str
    mtu: int = 1500
    role: str = ""             # for the kernel-path targets: kernel, vxlan, legacy, mixed
    offloads: bool = True      # the underlay's transmit offloads during its samples
    compare: str = ""          # the row of the same turns it is held against
    vxlan: str = "vxlan"       # the kernel VXLAN row of its "x VXLAN" column
    pings: int = 0             # pings per run; 0: --pings
    both_ways: bool = False    # iperf3 in both directions (-R too)
    watch: Watch | None = None


KERNEL_PATHS = (
    Path("veth", "veth (baseline)", H1, H2, "192.0.2.2"),
    Path("vxlan", "kernel VXLAN", D1, D2, "10.42.0.2", VXLAN_MTU),
)
VXLAN_DATA_PATH = Path("vxlan-path", "kernel vxlan data path", D1, D2, "10.156.0.2", VXLAN_MTU)
NAIVE_PATH = Path(NAIVE, "naive CPython forwarder", D1, D2, "10.99.0.2")
ADDRS = tuple(addr for _, addr in UNDERLAY.values())


def engine_paths(phase: str, mtu: int) -> tuple:
    label = PHASES[phase][1]
    return (Path(phase, label, D1, D2, "10.99.0.2", mtu),
            Path(phase + "-auth", label + " auth", D1, D2, "10.154.0.2", mtu),
            Path(phase + "-conf", label + " conf", D1, D2, "10.155.0.2", mtu))


def _clear_vnets(vnet_mtu: int) -> tuple:
    """(vnet id, domain 2 address, domain MTU) of the vnets the kernel path carries."""
    return ((VNETS[0][0], f"{VNETS[0][3]}.2", vnet_mtu),
            (NARROW_VNET[0], f"{NARROW_VNET[3]}.2", NARROW_MTU))


def _tx(offloads: bool) -> str:
    return "" if offloads else ", tx off"


def kernel_paths(offloads: bool, vnet_mtu: int, pings: int) -> tuple:
    """Kernel path between our engines at both domain MTUs, and kernel VXLAN,
    with the underlay's offloads as given."""
    tag = "on" if offloads else "off"
    vxlan = f"vxlan-{tag}"
    rows = [Path(f"kernel-{mtu}-{tag}", f"{KERNEL_LABEL}{_tx(offloads)}", D1, D2, addr, mtu,
                 "kernel", offloads, vxlan, vxlan, pings,
                 watch=Watch(H1, ADDRS, (H1, H2), vid))
            for vid, addr, mtu in _clear_vnets(vnet_mtu)]
    rows.append(Path(vxlan, f"kernel VXLAN{_tx(offloads)}", D1, D2, "10.42.0.2", VXLAN_MTU,
                     "vxlan", offloads, "", vxlan, pings))
    return tuple(rows)


def legacy_paths(offloads: bool, mixed: bool, vnet_mtu: int, pings: int) -> tuple:
    """Legacy to legacy, or our engine with the kernel path (host 1) to the
    legacy daemon (host 2): both MTUs, TCP both ways; the mixed rows watched
    on the legacy host's underlay."""
    tag = "on" if offloads else "off"
    rows = []
    for vid, addr, mtu in _clear_vnets(vnet_mtu):
        legacy = f"legacy-{mtu}-{tag}"
        if mixed:
            rows.append(Path(f"mixed-{mtu}-{tag}", f"kernel path to legacy{_tx(offloads)}",
                             D1, D2, addr, mtu, "mixed", offloads, legacy, pings=pings,
                             both_ways=True,
                             watch=Watch(H2, (UNDERLAY[H1][1],), (H1,), vid, True)))
        else:
            rows.append(Path(legacy, f"legacy C vnetd{_tx(offloads)}", D1, D2, addr, mtu,
                             "legacy", offloads, pings=pings, both_ways=True))
    return tuple(rows)


# -- taking samples -------------------------------------------------------------------------

class Watcher:
    """Captures and counters around one sample of a watched path."""

    def __init__(self, bed, watch: Watch, packets: int):
        self.bed = bed
        self.watch = watch
        self.packets = packets
        self.before = [bed.vnet_stats(host) for host in watch.engines]
        self.captures = [bed.capture(watch.capture, packets)]

    def rearm(self) -> None:
        """A new capture when the last one reached its count: each stage of
        the sample (iperf3 one way, the other, the pings) gets its share."""
        if self.captures[-1][0].poll() is not None:
            self.captures.append(self.bed.capture(self.watch.capture, self.packets))

    def finish(self) -> dict:
        after = [self.bed.vnet_stats(host) for host in self.watch.engines]
        total = None
        for proc, path in self.captures:
            report = self.bed.end_capture(proc, path, set(self.watch.sources))
            if total is None:
                total = report
            else:
                total.add(report)
        return {"capture": vars(total), "checksums": self.watch.checksums,
                "frames": kernel_frames(self.before, after, self.watch.vnet)}


def take_sample(bed, path: Path, seconds: float, pings: int, packets: int) -> dict:
    """iperf3 (both ways if asked) and ping on one path, watched if asked."""
    watcher = Watcher(bed, path.watch, packets) if path.watch else None
    try:
        if path.both_ways:
            # TCP intact both ways is a target: a failure is a result, not the end of the run.
            sample = _iperf_or_error(bed, path, seconds, False)
            sample["forward"] = dict(sample)
            if watcher:
                watcher.rearm()
            sample["reverse"] = _iperf_or_error(bed, path, seconds, True)
        else:
            sample = bed.iperf(path.client, path.addr, seconds)
        if watcher:
            watcher.rearm()
        sample.update(bed.ping(path.client, path.addr, path.pings or pings))
    finally:
        watched = watcher.finish() if watcher else {}
    sample.update(watched)
    return sample


def _iperf_or_error(bed, path: Path, seconds: float, reverse: bool) -> dict:
    try:
        return bed.iperf(path.client, path.addr, seconds, reverse=reverse)
    except BenchError as e:
        return {"bits_per_second": 0, "retransmits": 0, "error": str(e)}


def measure_groups(bed, groups: list, runs: int, seconds: float, pings: int,
                   packets: int = 20000) -> dict:
    """``runs`` samples of each path of each group, taken in turns (group 1's
    paths, group 2's, ..., then again): a shared machine's speed drifts over
    minutes, and paths compared with each other should see the same drift.
    A group is (set-up, paths); the set-up (None, or a callable that brings
    the test bed to the state its paths need) runs before its paths each time."""
    paths = [p for _, group in groups for p in group]
    samples: dict = {p.name: [] for p in paths}
    rcvbuf: dict = dict.fromkeys(samples, 0)
    for _ in range(runs):
        for setup, group in groups:
            if setup is not None:
                setup()
            for path in group:
                errors = bed.rcvbuf_errors()
                samples[path.name].append(take_sample(bed, path, seconds, pings, packets))
                errors_before, errors = errors, bed.rcvbuf_errors()
                rcvbuf[path.name] += errors - errors_before
    return {p.name: summarize(p, samples[p.name], rcvbuf[p.name]) for p in paths}


def measure(bed, paths: tuple, runs: int, seconds: float, pings: int) -> dict:
    """``runs`` samples of each of ``paths``, in turns (measure_groups)."""
    return measure_groups(bed, [(None, paths)], runs, seconds, pings)


def measure_all(bed: Testbed, opts: argparse.Namespace) -> dict:
    """Every path in one run: the kernel's, then each engine phase, then legacy."""
    args = (opts.runs, opts.seconds, opts.pings)
    results = measure(bed, KERNEL_PATHS, *args)
    for phase in opts.phases:
        if phase == NAIVE:
            bed.start_naive()
            results.update(measure(bed, (NAIVE_PATH,), *args))
            bed.stop_engines()
            continue
        if phase == KERNEL:
            bed.start_engines(KERNEL)
            results.update(measure_groups(bed, [
                (lambda: bed.set_offloads(True),
                 kernel_paths(True, opts.vnet_mtu, opts.target_pings)),
                (lambda: bed.set_offloads(False),
                 kernel_paths(False, opts.vnet_mtu, opts.target_pings))],
                *args, opts.capture_packets))
            bed.set_offloads(True)
            bed.stop_engines()
            continue
        bed.start_engines(phase)
        results.update(measure(bed, engine_paths(phase, opts.vnet_mtu), *args))
        if "vxlan-path" not in results:
            # The kernel carries it whatever the engines' options: measured once.
            results.update(measure(bed, (VXLAN_DATA_PATH,), *args))
        bed.stop_engines()
    if opts.legacy_vnetd:
        results.update(measure_legacy(bed, opts))
    return results


def measure_legacy(bed: Testbed, opts: argparse.Namespace) -> dict:
    """Legacy to legacy and kernel path to legacy, in turns: host 1 switches
    daemons once per run, the offloads twice."""
    bed.legacy = (opts.legacy_vnetd, opts.legacy_args)
    bed.ensure(H2, "legacy")

    def state(host_1: str, offloads: bool):
        return lambda: (bed.set_offloads(offloads), bed.ensure(H1, host_1))
    pings = opts.target_pings
    results = measure_groups(bed, [
        (state("legacy", True), legacy_paths(True, False, opts.vnet_mtu, pings)),
        (state("legacy", False), legacy_paths(False, False, opts.vnet_mtu, pings)),
        (state(KERNEL, False), legacy_paths(False, True, opts.vnet_mtu, pings)),
        (state(KERNEL, True), legacy_paths(True, True, opts.vnet_mtu, pings)),
    ], opts.runs, opts.seconds, opts.pings, opts.capture_packets)
    bed.set_offloads(True)
    bed.stop_engines()
    return results


def profile_summary(prefix: str, top: int = 12) -> str:
    import pstats
    out = []
    for phase, label in [*((p, v[1]) for p, v in PHASES.items()), (KERNEL, KERNEL_LABEL)]:
        for host in (H1, H2):
            path = f"{prefix}-{phase}-{host}.prof"
            if not os.path.exists(path):
                continue
            role = "sender (TAP -> UDP)" if host == H1 else "receiver (UDP -> TAP)"
            out.append(f"--- {label} in {host}, {role}: top {top} by own time")
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


ALL_PHASES = (*PHASES, KERNEL, NAIVE)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="runs per path; medians shown")
    p.add_argument("--seconds", type=float, default=5.0, help="iperf3 duration per run")
    p.add_argument("--pings", type=int, default=20, help="pings per run (0.05 s apart)")
    p.add_argument("--target-pings", type=int, default=200,
                   help="pings per run on the rows the kernel-path targets compare "
                        "(default %(default)s)")
    p.add_argument("--capture-packets", type=int, default=20000,
                   help="packets per capture of the underlay on watched rows "
                        "(default %(default)s)")
    p.add_argument("--vnet-mtu", type=int, default=1500,
                   help="MTU of the vnet TAPs and domain links (default 1500, the engine's); "
                        f"vnet 9d's domains stay at {NARROW_MTU}")
    p.add_argument("--json", metavar="FILE", help="write every sample and the medians here")
    p.add_argument("--profile", metavar="PREFIX",
                   help="run both vnetd under cProfile, write PREFIX-<host>.prof and print "
                        "where they spend time (slows the engines: figures are not comparable)")
    p.add_argument("--legacy-vnetd", metavar="PATH",
                   help="also measure this legacy C vnetd binary (run in both hosts, then "
                        "in host 2 toward our engine with the kernel path)")
    p.add_argument("--legacy-args", default="",
                   help="more arguments for it; {device} and {addr} become the host's "
                        "underlay device and address")
    p.add_argument("--phases", default=",".join(ALL_PHASES),
                   help="engine phases (and the naive forwarder) to run, comma-separated "
                        "(default %(default)s)")
    opts = p.parse_args(argv)
    opts.phases = [ph for ph in opts.phases.split(",") if ph]
    unknown = [ph for ph in opts.phases if ph not in ALL_PHASES]
    if unknown:
        p.error(f"unknown phase {', '.join(unknown)}; choose from {', '.join(ALL_PHASES)}")
    if opts.legacy_vnetd and not os.access(opts.legacy_vnetd, os.X_OK):
        p.error(f"--legacy-vnetd {opts.legacy_vnetd}: not an executable file")
    if os.geteuid() != 0:
        print("throughput.py: needs root (network namespaces)", file=sys.stderr)
        return 1
    tools = ["ip", "iperf3", "ping"]
    if KERNEL in opts.phases or opts.legacy_vnetd:
        tools += ["ethtool", "tcpdump", "tc", "unshare"]
    for tool in tools:
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
    print(f"# iperf3 TCP one stream {opts.seconds:g} s, {opts.pings} pings at 0.05 s "
          f"({opts.target_pings} on the kernel-path target rows), "
          f"median of {opts.runs} run{'s' if opts.runs != 1 else ''}")
    print(table(results))
    print(targets(results))
    if profile:
        print(profile_summary(profile))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"machine": info, "options": vars(opts), "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
