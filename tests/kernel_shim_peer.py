"""A stand-in for the engine's control of the kernel path, for the root
end-to-end tests of KernelShim (tests/test_e2e_kernel_shim.py).

Run inside a host namespace as ``python3 tests/kernel_shim_peer.py``; it
reads one JSON command per line on stdin and answers one JSON line on
stdout.  It holds the vnet's TAP open (a TAP with no reader has no carrier
and its bridge port forwards nothing) and counts the frames the kernel path
left to user space, as the engine would read them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from xend_vnet.kernel_shim.datapath.kernel.shim import (  # noqa: E402
    KernelPathUnavailable, KernelShim, ShimConfig)
from xend_vnet.kernel_shim.datapath.tap import open_tap  # noqa: E402
from xend_vnet.vnet_id import VnetId  # noqa: E402


class Peer:
    def __init__(self):
        self.shim: KernelShim | None = None
        self.config: ShimConfig | None = None
        self.taps = {}
        self.frames: list[bytes] = []
        self.lock = threading.Lock()

    def _reader(self, tap):
        while True:
            try:
                select.select([tap.fd], [], [], 1.0)
                for frame in tap.read_batch(64):
                    with self.lock:
                        self.frames.append(frame)
            except Exception:  # noqa: BLE001 -- the TAP went away with the test
                return

    def op_open(self, underlay, local, mtu=1500, port=1798, object_path=None):
        self.config = ShimConfig(underlay=underlay, local_addr=local, mtu=mtu, port=port)
        self.shim = KernelShim.open(self.config, object_path=object_path)
        return {"adopted": self.shim.adopted}

    def op_tap(self, name, mtu=1500):
        tap = open_tap(name, mtu=mtu)
        self.taps[name] = tap
        threading.Thread(target=self._reader, args=(tap,), daemon=True).start()
        return tap.index

    def op_ifindex(self, name):
        from pyroute2 import IPRoute
        with IPRoute() as ipr:
            return ipr.link_lookup(ifname=name)[0]

    def op_attach(self, vid, tap_ifindex):
        self.shim.attach(VnetId.parse(vid), tap_ifindex)

    def op_detach(self, vid):
        self.shim.detach(VnetId.parse(vid))

    def op_attached(self):
        return {str(v): t for v, t in self.shim.attached().items()}

    def op_set_remote(self, vid, mac, addr, kernel_peer=True):
        self.shim.set_remote(VnetId.parse(vid), bytes.fromhex(mac.replace(":", "")), addr,
                             kernel_peer=kernel_peer)

    def op_del_remote(self, vid, mac):
        self.shim.del_remote(VnetId.parse(vid), bytes.fromhex(mac.replace(":", "")))

    def op_set_local(self, vid, mac):
        self.shim.set_local(VnetId.parse(vid), bytes.fromhex(mac.replace(":", "")))

    def op_remotes(self):
        return [[str(v), m.hex(), a, k] for (v, m), (a, k) in self.shim.remotes().items()]

    def op_locals(self):
        return [[str(v), m.hex()] for v, m in self.shim.locals()]

    def op_used(self, vid, mac, kind="remote"):
        """The use stamp of one remote (or local) entry, None when not in the map."""
        key = (VnetId.parse(vid), bytes.fromhex(mac.replace(":", "")))
        read = self.shim.remotes_used if kind == "remote" else self.shim.locals_used
        return read([key]).get(key)

    def op_monotonic_ns(self):
        return time.monotonic_ns()

    def op_counters(self):
        return {str(v): c for v, c in self.shim.counters().items()}

    def op_events(self):
        out = []
        for e in self.shim.events():
            out.append({"kind": type(e).__name__, "vid": str(e.vid), "mac": e.mac.hex(),
                        "addr": getattr(e, "addr", None)})
        return out

    def op_event_fd_ready(self, timeout=2.0):
        r, _, _ = select.select([self.shim.event_fd()], [], [], timeout)
        return bool(r)

    def op_frames(self):
        with self.lock:
            return [f.hex() for f in self.frames]

    def op_clear_frames(self):
        with self.lock:
            self.frames.clear()

    def op_refresh(self):
        self.shim.refresh()

    def op_kernel_ports(self):
        return {str(v): dataclasses.asdict(p) for v, p in self.shim.kernel_ports().items()}

    def op_del_local(self, vid, mac):
        self.shim.del_local(VnetId.parse(vid), bytes.fromhex(mac.replace(":", "")))

    def op_close(self):
        self.shim.close()
        self.shim = None

    def op_purge(self):
        self.shim.purge()
        self.shim = None


def main() -> int:
    peer = Peer()
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        op = req.pop("op")
        try:
            result = getattr(peer, "op_" + op)(**req)
            reply = {"ok": True, "result": result}
        except KernelPathUnavailable as e:
            reply = {"ok": False, "unavailable": e.reason}
        except Exception as e:  # noqa: BLE001 -- reported to the test
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}",
                     "trace": traceback.format_exc()}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
