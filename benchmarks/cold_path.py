#!/usr/bin/env python3
"""How long the engine's core takes for one frame after a pause, on this machine.

A frame that arrives alone (a ping) finds the engine's code and data no
longer in the CPU caches; a frame of a stream finds them warm.  This times
``EngineCore.receive_tap`` for one 98-byte frame to a learned address,
``--samples`` times, each after ``--pause`` seconds of busy waiting (so the
process never sleeps: what is measured is the caches, not the wake-up),
and prints the median and 90th percentile for each pause.  No root needed.

    python3 benchmarks/cold_path.py [--pause 0 0.001 0.005 0.02]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from xend_vnet.kernel_shim.wire import codec# noqa: E402
from xend_vnet.kernel_shim.core.engine import CoreOptions, EngineCore# noqa: E402
from xend_vnet.vnet_id import VnetId  # noqa: E402

VID = VnetId.parse("99")
LOCAL, REMOTE = bytes.fromhex("aa0000000001"), bytes.fromhex("aa0000000002")


def engine() -> EngineCore:
    core = EngineCore(CoreOptions())
    core.self_address = "192.0.2.1"
    core.add_vnet(VID, "vnif0099")
    frame = LOCAL + REMOTE + b"\x08\x00" + bytes(84)     # teaches REMOTE's address
    core.receive_udp(codec.DATA_PREFIX + VID.raw + frame, "192.0.2.2", "192.0.2.1",
                     time.monotonic())
    return core


def times(core: EngineCore, pause: float, samples: int) -> list[float]:
    frame = REMOTE + LOCAL + b"\x08\x00" + bytes(84)
    out = []
    for _ in range(samples):
        end = time.perf_counter() + pause
        while time.perf_counter() < end:
            pass
        start = time.perf_counter()
        core.receive_tap(VID, frame, time.monotonic())
        out.append((time.perf_counter() - start) * 1e6)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pause", type=float, nargs="+", default=[0, 0.0002, 0.001, 0.005, 0.02],
                   metavar="SECONDS", help="busy-wait before each frame")
    p.add_argument("--samples", type=int, default=200)
    opts = p.parse_args(argv)
    core = engine()
    print(f"{'pause ms':>9} {'median us':>10} {'90% us':>8}")
    for pause in opts.pause:
        t = sorted(times(core, pause, opts.samples))
        print(f"{pause * 1e3:9.1f} {statistics.median(t):10.1f} {t[len(t) * 9 // 10]:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
