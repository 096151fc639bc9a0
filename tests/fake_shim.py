"""The kernel shim's API (datapath/kernel/shim.py) without a kernel, for the
kernel path's unit tests (datapath/kernel/path.py).

``FakeKernel`` is what one network namespace's kernel holds: the vnets
attached (vid -> TAP ifindex), the remote and local maps with their use
stamps (``kernel.use`` is a frame from a MAC), the per-vnet counters, the
refreshes of the kernel ports; it outlives a ``FakeShim`` as the real programs and maps outlive
an engine, so a second ``open`` adopts what the first left.  ``FakeShim``
implements every call of ``KernelShim``, records them in ``kernel.calls``,
refuses the ones a test names in ``kernel.refuse`` as the real one does
(``KernelPathUnavailable``), and delivers the events a test pushes
(``kernel.push``) through a pipe the event loop can watch.
"""

from __future__ import annotations

import os

from xend_vnet.kernel_shim.datapath.kernel.shim import (
    KernelPathUnavailable,
    LocalSeen,
    RemoteSeen,
    ShimConfig,
)
from xend_vnet.vnet_id import VnetId

__all__ = ["FakeKernel", "FakeShim", "KernelPathUnavailable", "LocalSeen", "RemoteSeen",
           "ShimConfig"]


class FakeKernel:
    def __init__(self) -> None:
        self.attached: dict[VnetId, int] = {}
        self.remotes: dict[tuple[VnetId, bytes], tuple[str, bool]] = {}
        self.locals: set[tuple[VnetId, bytes]] = set()
        # ("remote" or "local", (vid, mac)) -> use stamp, as the programs write it
        self.used: dict[tuple[str, tuple[VnetId, bytes]], int] = {}
        self._clock = 0
        self.counters: dict[VnetId, dict[str, int]] = {}
        self.loaded = False             # programs in the kernel (open until purge)
        self.calls: list[tuple] = []
        self.refuse: dict[str, str] = {}     # call name -> the reason it fails with
        self.configs: list[ShimConfig] = []
        self.shim: FakeShim | None = None    # the open one
        self._events: list = []
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def opener(self, config: ShimConfig) -> FakeShim:
        """``KernelShim.open`` for this kernel."""
        self.calls.append(("open", config))
        if "open" in self.refuse:
            raise KernelPathUnavailable(self.refuse["open"])
        self.configs.append(config)
        self.loaded = True
        self.shim = FakeShim(self, config)
        return self.shim

    def push(self, *events) -> None:
        """Events the programs report: the event fd becomes readable."""
        self._events += events
        os.write(self._w, b"e")

    def use(self, kind: str, vid: VnetId, mac: bytes) -> None:
        """A frame from ``mac``: the programs stamp its ``kind`` ("remote" or
        "local") entry, if the map holds it."""
        key = (vid, mac)
        if key in (self.remotes if kind == "remote" else self.locals):
            self._clock += 1
            self.used[(kind, key)] = self._clock

    def ops(self, *names: str) -> list[tuple]:
        """The recorded calls named ``names`` (all when none)."""
        return [c for c in self.calls if not names or c[0] in names]

    def close(self) -> None:
        os.close(self._r)
        os.close(self._w)


class FakeShim:
    """One engine's handle on ``kernel`` (KernelShim's API)."""

    def __init__(self, kernel: FakeKernel, config: ShimConfig):
        self.kernel = kernel
        self.config = config
        self.closed = False

    def _call(self, name: str, *args) -> None:
        if self.closed:
            raise KernelPathUnavailable("kernel shim closed")
        self.kernel.calls.append((name, *args))
        if name in self.kernel.refuse:
            raise KernelPathUnavailable(self.kernel.refuse[name])

    def attach(self, vid: VnetId, tap_ifindex: int) -> None:
        self._call("attach", vid, tap_ifindex)
        k = self.kernel
        if vid in k.attached and k.attached[vid] != tap_ifindex:
            self._forget(vid)
        k.attached[vid] = tap_ifindex
        k.counters.setdefault(vid, {"encapsulated": 0, "decapsulated": 0,
                                    "to_user_flood": 0, "to_user_no_route": 0})

    def _forget(self, vid: VnetId) -> None:
        k = self.kernel
        k.remotes = {key: v for key, v in k.remotes.items() if key[0] != vid}
        k.locals = {key for key in k.locals if key[0] != vid}
        k.used = {key: v for key, v in k.used.items() if key[1][0] != vid}
        k.counters.pop(vid, None)

    def detach(self, vid: VnetId) -> None:
        self._call("detach", vid)
        if self.kernel.attached.pop(vid, None) is not None:
            self._forget(vid)

    def attached(self) -> dict[VnetId, int]:
        self._call("attached")
        return dict(self.kernel.attached)

    def set_remote(self, vid: VnetId, mac: bytes, addr: str, *, kernel_peer: bool) -> None:
        self._call("set_remote", vid, mac, addr, kernel_peer)
        self.kernel.remotes[(vid, mac)] = (addr, kernel_peer)
        self.kernel.used[("remote", (vid, mac))] = 0

    def del_remote(self, vid: VnetId, mac: bytes) -> None:
        self._call("del_remote", vid, mac)
        self.kernel.remotes.pop((vid, mac), None)
        self.kernel.used.pop(("remote", (vid, mac)), None)

    def set_local(self, vid: VnetId, mac: bytes) -> None:
        self._call("set_local", vid, mac)
        self.kernel.locals.add((vid, mac))
        self.kernel.used[("local", (vid, mac))] = 0

    def del_local(self, vid: VnetId, mac: bytes) -> None:
        self._call("del_local", vid, mac)
        self.kernel.locals.discard((vid, mac))
        self.kernel.used.pop(("local", (vid, mac)), None)

    def remotes_used(self, keys) -> dict[tuple[VnetId, bytes], int]:
        keys = list(keys)
        self._call("remotes_used", keys)
        k = self.kernel
        return {key: k.used.get(("remote", key), 0) for key in keys if key in k.remotes}

    def locals_used(self, keys) -> dict[tuple[VnetId, bytes], int]:
        keys = list(keys)
        self._call("locals_used", keys)
        k = self.kernel
        return {key: k.used.get(("local", key), 0) for key in keys if key in k.locals}

    def refresh(self) -> None:
        self._call("refresh")

    def remotes(self) -> dict[tuple[VnetId, bytes], tuple[str, bool]]:
        self._call("remotes")
        return dict(self.kernel.remotes)

    def locals(self) -> set[tuple[VnetId, bytes]]:
        self._call("locals")
        return set(self.kernel.locals)

    def event_fd(self) -> int:
        return self.kernel._r

    def events(self) -> list:
        self._call("events")
        k = self.kernel
        try:
            os.read(k._r, 4096)
        except BlockingIOError:
            pass
        out, k._events = k._events, []
        return out

    def counters(self) -> dict[VnetId, dict[str, int]]:
        self._call("counters")
        return {vid: dict(c) for vid, c in self.kernel.counters.items()
                if vid in self.kernel.attached}

    def close(self) -> None:
        self.kernel.calls.append(("close",))
        self.closed = True
        self.kernel.shim = None

    def purge(self) -> None:
        self._call("purge")
        k = self.kernel
        k.attached.clear()
        k.remotes.clear()
        k.locals.clear()
        k.used.clear()
        k.counters.clear()
        k.loaded = False
        self.closed = True
        k.shim = None
