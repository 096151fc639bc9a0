"""How benchmarks/throughput.py takes its samples and judges its targets (no
network: a recording test bed).

Paths compared with each other are sampled in turns, so a machine whose
speed drifts over minutes slows them alike; each path keeps its own samples,
medians and receive-buffer errors.  Watched paths add what the captures held
and the kernel path's counters; the targets pass or fail on those.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys

import pytest
from netns import REPO

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
_spec = importlib.util.spec_from_file_location(
    "throughput", os.path.join(REPO, "benchmarks", "throughput.py"))
throughput = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(throughput)

import capture_check  # noqa: E402
import throughput_report as report  # noqa: E402

Path, Watch = throughput.Path, throughput.Watch


def stats(vnet: str, **counters) -> str:
    """A ``(vnet.stats)`` reply of an engine whose kernel path carries ``vnet``."""
    frames = " ".join(f"(kernel_{k} {v})" for k, v in counters.items()
                      if not k.startswith("to_user_"))
    to_user = " ".join(f"({k[8:]} {v})" for k, v in counters.items() if k.startswith("to_user_"))
    return (f"(engine_stats (rx_datagrams 5))(vnet_stats (vnet {vnet}) (vnetif vnif0099) "
            f"(rx_packets 3) (dropped) {frames} (kernel_mss_clamped 2) "
            f"(kernel_to_user {to_user}))")


class RecordingBed:
    """Answers iperf and ping from tables; counts one receive-buffer error per
    sample of the path named ``lossy``; its engines' kernel counters grow by
    ``kernel`` and ``user`` frames per reading; its captures hold ``capture``."""

    def __init__(self, speeds: dict, lossy: str = "", kernel: int = 0, user: int = 0,
                 capture: capture_check.Report | None = None, fail_reverse: bool = False):
        self.speeds = {addr: list(v) for addr, v in speeds.items()}
        self.lossy = lossy
        self.order: list = []
        self.errors = 0
        self.kernel, self.user = kernel, user
        self.readings = 0
        self.capture_report = capture or capture_check.Report()
        self.captures: list = []
        self.ended: list = []
        self.fail_reverse = fail_reverse

    def rcvbuf_errors(self) -> int:
        return self.errors

    def iperf(self, client: str, addr: str, seconds: float, reverse: bool = False) -> dict:
        self.order.append(addr + (" -R" if reverse else ""))
        if reverse and self.fail_reverse:
            raise throughput.BenchError("iperf3 -R: connection refused")
        if addr == self.lossy:
            self.errors += 1
        return {"bits_per_second": self.speeds[addr].pop(0), "retransmits": 0}

    def ping(self, client: str, addr: str, count: int) -> dict:
        self.order.append(f"ping {addr} x{count}")
        return {"rtt_avg_ms": 0.5, "rtt_min_ms": 0.4, "rtt_ms": [0.3, 0.5, 0.4][:count],
                "loss_percent": 0.0}

    def vnet_stats(self, host: str) -> str:
        self.readings += 1
        n = self.readings // 2       # both engines read before, then both after
        return stats("99", encapsulated=n * self.kernel, decapsulated=0,
                     to_user_flood=n * self.user)

    def capture(self, host: str, packets: int):
        class Done:
            def poll(self):
                return 0          # every capture reached its count
        self.captures.append((host, packets))
        return Done(), f"capture-{len(self.captures)}"

    def end_capture(self, proc, path: str, sources) -> capture_check.Report:
        self.ended.append((path, sources))
        return capture_check.Report(**vars(self.capture_report))


PATHS = (Path("none", "none", "d1", "d2", "a"),
         Path("conf", "none conf", "d1", "d2", "c"))


def test_paths_are_sampled_in_turns():
    bed = RecordingBed({"a": [3e9, 1e9, 2e9], "c": [2e9, 4e9, 1e9]}, lossy="c")
    results = throughput.measure(bed, PATHS, 3, 1.0, 5)
    assert [x for x in bed.order if not x.startswith("ping")] == ["a", "c", "a", "c", "a", "c"]
    assert [s["bits_per_second"] for s in results["none"]["samples"]] == [3e9, 1e9, 2e9]
    assert results["none"]["gbit_per_second"] == 2.0
    assert results["conf"]["gbit_per_second"] == 2.0
    assert results["conf"]["label"] == "none conf"
    assert (results["none"]["rcvbuf_errors"], results["conf"]["rcvbuf_errors"]) == (0, 3)


def test_one_run_of_one_path():
    bed = RecordingBed({"a": [5e9]})
    results = throughput.measure(bed, PATHS[:1], 1, 1.0, 5)
    assert bed.order == ["a", "ping a x5"]
    assert results["none"]["gbit_per_second"] == 5.0
    assert results["none"]["rtt_avg_ms"] == 0.5
    assert results["none"]["rtt_median_ms"] == 0.4       # of every ping, not of the averages
    assert results["none"]["pings"] == 3


def test_groups_take_turns_with_their_set_up_before_each():
    bed = RecordingBed({"a": [1e9, 1e9], "c": [2e9, 2e9]})
    states: list = []
    throughput.measure_groups(bed, [(lambda: states.append("on"), PATHS[:1]),
                                    (lambda: states.append("off"), PATHS[1:])], 2, 1.0, 2)
    assert states == ["on", "off", "on", "off"]
    assert [x for x in bed.order if not x.startswith("ping")] == ["a", "c", "a", "c"]


def test_the_kernel_rows_of_one_offload_setting():
    rows = throughput.kernel_paths(False, 1500, 200)
    assert [r.name for r in rows] == ["kernel-1500-off", "kernel-1436-off", "vxlan-off"]
    assert [r.mtu for r in rows] == [1500, 1436, 1450]
    assert all(r.pings == 200 and not r.offloads for r in rows)
    assert {r.compare for r in rows[:2]} == {"vxlan-off"}
    assert [r.watch.vnet for r in rows[:2]] == ["99", "9d"]
    assert rows[0].watch.engines == (throughput.H1, throughput.H2) and rows[2].watch is None


def test_the_legacy_rows():
    legacy = throughput.legacy_paths(True, False, 1500, 200)
    mixed = throughput.legacy_paths(True, True, 1500, 200)
    assert [r.name for r in legacy] == ["legacy-1500-on", "legacy-1436-on"]
    assert [r.compare for r in mixed] == ["legacy-1500-on", "legacy-1436-on"]
    assert all(r.both_ways for r in legacy + mixed)
    # Watched where the frames arrive: the legacy host's underlay, datagrams from host 1.
    assert mixed[0].watch.capture == throughput.H2
    assert mixed[0].watch.sources == (throughput.UNDERLAY[throughput.H1][1],)
    assert mixed[0].watch.engines == (throughput.H1,)


def test_a_watched_path_counts_its_captures_and_kernel_frames():
    cap = capture_check.Report(datagrams=10, data_frames=9, l4_checked=8)
    bed = RecordingBed({"a": [1e9, 1e9]}, kernel=990, user=10, capture=cap)
    path = Path("k", "kernel", "d1", "d2", "a", watch=Watch("h2", ("192.0.2.1",), ("h1", "h2"),
                                                            "99"))
    results = throughput.measure_groups(bed, [(None, (path,))], 2, 1.0, 3, packets=500)
    r = results["k"]
    # One capture for the iperf3, a new one for the pings (the first reached its count).
    assert len(bed.captures) == 4 and bed.captures[0][1] == 500
    assert all(sources == {"192.0.2.1"} for _, sources in bed.ended)
    assert r["capture"]["data_frames"] == 36
    assert r["frames"] == {"kernel": 2 * 2 * 990, "user": 2 * 2 * 10,
                           "to_user": {"flood": 2 * 2 * 10}}
    assert r["kernel_share"] == pytest.approx(0.99)
    assert r["checksums"] is False


def test_tcp_both_ways_records_a_failure_instead_of_ending_the_run():
    bed = RecordingBed({"a": [1e9]}, fail_reverse=True)
    path = Path("m", "mixed", "d1", "d2", "a", both_ways=True)
    r = throughput.measure(bed, (path,), 1, 1.0, 3)["m"]
    assert bed.order[:2] == ["a", "a -R"]
    assert r["gbit_per_second"] == 1.0 and r["reverse_gbit_per_second"] == 0
    assert r["tcp_errors"] == ["iperf3 -R: connection refused"]


def test_kernel_counters_of_each_vnet():
    first = stats("0099", encapsulated=7, decapsulated=3, to_user_no_route=2)
    other = stats("9d", encapsulated=4, decapsulated=0, to_user_flood=1, to_user_fragment=2)
    user_space = "(vnet_stats (vnet 9a) (vnetif vnif009a) (rx_packets 9) (dropped))"
    counters = report.kernel_counters(first + other + user_space)
    assert counters["0000:0000:0000:0000:0000:0000:0000:0099"] == {
        "encapsulated": 7, "decapsulated": 3, "to_user_no_route": 2}
    assert counters["0000:0000:0000:0000:0000:0000:0000:009a"] == {}
    grown = other.replace("(kernel_encapsulated 4)", "(kernel_encapsulated 104)").replace(
        "(flood 1)", "(flood 2)")
    assert report.kernel_frames([other], [grown], "9d") == {"kernel": 100, "user": 1,
                                                             "to_user": {"flood": 1}}
    assert math.isnan(report.share({"kernel": 0, "user": 0}))


def row(gbit: float, rtt: float, **kw) -> dict:
    r = {"label": kw.pop("label", "x"), "mtu": 1500, "role": "", "offloads": True,
         "compare": "", "vxlan": "vxlan", "gbit_per_second": gbit, "rtt_avg_ms": rtt,
         "rtt_median_ms": rtt, "pings": 200, "retransmits": 0, "rcvbuf_errors": 0}
    r.update(kw)
    return r


def honest(data_frames: int = 100, fast: int = 0, bad: int = 0, l4: int = 50,
           kernel: int = 995) -> dict:
    return {"capture": vars(capture_check.Report(data_frames=data_frames, fast=fast, bad=bad,
                                                 l4_checked=l4)),
            "frames": {"kernel": kernel, "user": 1000 - kernel,
                       "to_user": {"partial_csum_to_legacy": 1000 - kernel}},
            "kernel_share": kernel / 1000, "checksums": True}


def test_kernel_targets_pass_and_fail_on_their_thresholds():
    results = {
        "veth": row(10, 0.05), "vxlan": row(5, 0.1),
        "vxlan-on": row(5.0, 0.100, role="vxlan"),
        "kernel-1500-on": row(4.6, 0.119, role="kernel", compare="vxlan-on", **honest()),
        "kernel-1436-on": row(4.4, 0.119, role="kernel", compare="vxlan-on", **honest()),
        "vxlan-off": row(2.0, 0.100, role="vxlan", offloads=False),
        "kernel-1500-off": row(1.6, 0.1, role="kernel", offloads=False, compare="vxlan-off",
                               **honest(fast=3)),
        "kernel-1436-off": row(1.7, 0.1, role="kernel", offloads=False, compare="vxlan-off",
                               mtu=1436, **honest(fast=1, kernel=980)),
    }
    lines = report.kernel_targets(results)
    assert [ok for line, ok in lines if line.startswith("target 1")] == [True, False]
    assert [ok for line, ok in lines if line.startswith("target 2")] == [True, True]
    # Honest rows: more than 1 % of id-5 messages, or under 99 % in the kernel, fail.
    assert [ok for line, ok in lines if line.startswith("target 4")] == [True, True, False,
                                                                         False]
    assert "to the engine: partial_csum_to_legacy 20" in lines[-1][0]
    text = report.targets(results)
    assert "# FAIL target 1" in text and "kernel path targets: 5 of 8 met" in text


def test_mixed_targets_need_rtt_tcp_both_ways_and_clean_checksums():
    base = {"veth": row(10, 0.05), "vxlan": row(5, 0.1),
            "legacy-1500-on": row(0.4, 0.30, role="legacy")}

    def mixed(rtt: float = 0.2, **kw) -> bool:
        fields = dict(role="mixed", compare="legacy-1500-on", reverse_gbit_per_second=0.5,
                      tcp_errors=[], **honest())
        fields.update(kw)
        results = dict(base, m=row(2.0, rtt, **fields))
        return [ok for line, ok in report.kernel_targets(results)
                if line.startswith("target 3")][0]
    assert mixed()
    assert not mixed(rtt=0.31)
    assert not mixed(reverse_gbit_per_second=0.0)
    assert not mixed(tcp_errors=["iperf3 -R: refused"])
    assert not mixed(capture=vars(capture_check.Report(data_frames=5, l4_checked=5, bad=1)))
    assert not mixed(capture=vars(capture_check.Report(data_frames=5, l4_checked=0)))


def test_user_space_rows_are_held_against_the_measured_legacy_row_when_there_is_one():
    results = {"veth": row(10, 0.05), "vxlan": row(5, 0.1), "plain": row(0.5, 0.7),
               "legacy-1436-on": row(0.3, 0.3, role="legacy", mtu=1436),
               "legacy-1500-on": row(0.4, 0.35, role="legacy", label="legacy C vnetd")}
    text = report.targets(results)
    assert "/ legacy 1.25" in text and "legacy C vnetd, this run" in text
    del results["legacy-1500-on"], results["legacy-1436-on"]
    assert "estimated" in report.targets(results)


def test_the_table_holds_every_row_and_the_watched_ones_again():
    results = {"veth": row(10, 0.05), "vxlan": row(5, 0.1),
               "vxlan-on": row(5.0, 0.1, role="vxlan", label="kernel VXLAN"),
               "kernel-1500-on": row(5.0, 0.1, role="kernel", compare="vxlan-on",
                                     vxlan="vxlan-on", label="vnetd kernel path",
                                     **dict(honest(bad=7), checksums=False)),
               "mixed-1500-on": row(0.5, 0.2, role="mixed", label="kernel path to legacy",
                                    reverse_gbit_per_second=0.4, **honest())}
    text = report.table(results)
    kernel_line = [line for line in text.splitlines() if line.startswith("vnetd kernel path")]
    assert len(kernel_line) == 2                  # in the table and in the watched rows
    assert "   1.000 " in kernel_line[0]          # x VXLAN of its own turns
    # Between our engines the checksums are not judged: not shown.
    assert kernel_line[1].split()[-4:] == ["100", "0", "-", "-"]
    assert "99.50" in kernel_line[1]
    mixed_line = [line for line in text.splitlines() if line.startswith("kernel path to")][1]
    assert mixed_line.split()[-6:] == ["0.400", "99.50", "100", "0", "50", "0"]
