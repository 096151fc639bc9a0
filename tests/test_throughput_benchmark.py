"""How benchmarks/throughput.py takes its samples (no network: a recording test bed).

Paths compared with each other are sampled in turns, so a machine whose
speed drifts over minutes slows them alike; each path keeps its own samples,
medians and receive-buffer errors.
"""

from __future__ import annotations

import importlib.util
import os

from netns import REPO

_spec = importlib.util.spec_from_file_location(
    "throughput", os.path.join(REPO, "benchmarks", "throughput.py"))
throughput = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(throughput)


class RecordingBed:
    """Answers iperf and ping from tables; counts one receive-buffer error per
    sample of the path named ``lossy``."""

    def __init__(self, speeds: dict, lossy: str):
        self.speeds = {addr: list(v) for addr, v in speeds.items()}
        self.lossy = lossy
        self.order: list = []
        self.errors = 0

    def rcvbuf_errors(self) -> int:
        return self.errors

    def iperf(self, client: str, addr: str, seconds: float) -> dict:
        self.order.append(addr)
        if addr == self.lossy:
            self.errors += 1
        return {"bits_per_second": self.speeds[addr].pop(0), "retransmits": 0}

    def ping(self, client: str, addr: str, count: int) -> dict:
        return {"rtt_avg_ms": 0.5, "rtt_min_ms": 0.4, "loss_percent": 0.0}


PATHS = (("none", "none", "d1", "d2", "a"),
         ("conf", "none conf", "d1", "d2", "c"))


def test_paths_are_sampled_in_turns():
    bed = RecordingBed({"a": [3e9, 1e9, 2e9], "c": [2e9, 4e9, 1e9]}, lossy="c")
    results = throughput.measure(bed, PATHS, 3, 1.0, 5)
    assert bed.order == ["a", "c", "a", "c", "a", "c"]
    assert [s["bits_per_second"] for s in results["none"]["samples"]] == [3e9, 1e9, 2e9]
    assert results["none"]["gbit_per_second"] == 2.0
    assert results["conf"]["gbit_per_second"] == 2.0
    assert results["conf"]["label"] == "none conf"
    assert (results["none"]["rcvbuf_errors"], results["conf"]["rcvbuf_errors"]) == (0, 3)


def test_one_run_of_one_path():
    bed = RecordingBed({"a": [5e9]}, lossy="")
    results = throughput.measure(bed, PATHS[:1], 1, 1.0, 5)
    assert bed.order == ["a"]
    assert results["none"]["gbit_per_second"] == 5.0
    assert results["none"]["rtt_avg_ms"] == 0.5
