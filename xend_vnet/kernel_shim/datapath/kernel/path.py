"""The kernel path: the engine as the control plane of the TC eBPF programs
that carry the known unicast of clear vnets (design.md 1.1, architecture.md 4).

A ``(data-path vnetd)`` vnet keeps its TAP and the engine's UDP socket (the
user-space path, userspace.py); the kernel path accelerates it.  Once the
TAP is attached, the shim (shim.py) encapsulates at the TAP's egress what
goes to a MAC its remote map holds and decapsulates at the underlay's
ingress the vnet's data for our address; whatever else it meets (floods,
unknown unicast, non-IP, fragments, frames that do not fit, a super-frame
toward a host that does not decapsulate in its kernel) goes on to the TAP
or the UDP socket, to the engine, as before, and is counted by reason.
Secured vnets are never attached (design.md 7).

What it keeps in step:

* the shim's maps with the core's tables: the VARP cache's reachable
  entries (``set_remote``, with ``kernel_peer`` when the engine there
  announced ``CAP_KERNEL`` for the vnet) and the vif table (``set_local``),
  from the changes the core reports (core/mirror.py), applied after every
  wakeup of the event loop;
* the core's tables with what the kernel sees: a source it does not hold
  (``RemoteSeen``, ``LocalSeen``) is taught to the core as a datagram or a
  TAP frame would teach it, within the same bounds;
* ageing: the kernel reports only what its maps lack, and stamps the
  entries it holds when a frame comes from their MAC (at most once a
  second).  At the refresh the engine reads the stamps of the entries the
  core has not seen refreshed for half a TTL (at most USE_READS of them, each
  at most every quarter TTL) and tells the core of those whose stamp moved
  (``EngineCore.kernel_used``), which refreshes them as a frame through
  user space would.  So an entry in use stays in the maps (and its fdb
  entry on the kernel port, docs/kernel-path.md 4), and one whose MAC sends
  nothing ages as on the user-space path (protocol.md 3.5, 3.6), counted
  from the refresh that noticed its last use;
* the kernel ports with the bridges: the shim's ``refresh`` at every
  refresh and after an attach.

Restarts (design.md 5): ``close`` leaves programs, maps and kernel ports in
the kernel, so known unicast flows while no engine runs, whether the engine
stopped or was killed; the next ``open`` adopts them.
A vnet added again takes what the kernel held for it as learned (and
announces its local domains again, as any restart does); one not added
within a VARP TTL is detached; ``purge`` (``vn rmmod --purge``) removes it all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence

from ....vnet_id import VnetId
from ...core.counters import count
from ...core.engine import EngineCore
from ...core.mirror import KERNEL_PEER, VARP, VIF, TableChange
from ..interface import PathStatus
from ..loop import EventLoop
from ..userspace import UserSpacePath
from .shim import KernelPathUnavailable, KernelShim, RemoteSeen, ShimConfig

log = logging.getLogger("vnetd")

ERROR_LOG_INTERVAL = 10.0     # a failing map update is logged at most this often
USE_READS = 4096              # use stamps a refresh reads, at most (ageing, above)

Opener = Callable[[ShimConfig], KernelShim]
RemoteKey = tuple[VnetId, bytes]
UseKey = tuple[str, RemoteKey]          # (VARP or VIF, (vnet, MAC))


class KernelPath:
    """The kernel path of an engine: one shim, the vnets attached to it, and
    what its maps hold as far as the engine knows (a DataPath)."""

    name = "kernel"

    def __init__(self, core: EngineCore, loop: EventLoop, userspace: UserSpacePath,
                 opener: Opener, *, off_reason: str | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.core = core
        self.clock = clock                # the one the core is driven with
        self.loop = loop
        self.userspace = userspace
        self.opener = opener
        self.off_reason = off_reason      # why it may not be used at all (--no-kernel-path)
        self.shim: KernelShim | None = None
        self.config: ShimConfig | None = None
        self.reason = off_reason or "not loaded yet: no underlay address"
        self.adopted = False
        self.dropped = core.counters.io_dropped
        self._attached: dict[VnetId, int] = {}          # vnet -> TAP ifindex
        self._refused: dict[VnetId, str] = {}           # vnet -> why not in the kernel
        # What the shim's maps hold for our vnets, as far as we know.
        self._remotes: dict[RemoteKey, tuple[str, bool]] = {}
        self._locals: set[RemoteKey] = set()
        self._macs_at: dict[tuple[VnetId, str], set[bytes]] = {}   # for kernel_peer changes
        # Ageing (above): an entry's use stamp as last read (0 when we wrote
        # the entry), and when it was read.
        self._used: dict[UseKey, tuple[int, float]] = {}
        # Left by the previous engine, until its vnets are added again: by vnet,
        # its TAP's ifindex, its remote entries (MAC -> address, kernel_peer)
        # and its local MACs.
        self._left: dict[VnetId, int] = {}
        self._left_remotes: dict[VnetId, dict[bytes, tuple[str, bool]]] = {}
        self._left_locals: dict[VnetId, set[bytes]] = {}
        self._left_until = 0.0
        self._no_tap: set[VnetId] = set()               # to attach once the TAP is back
        self._dirty: set[VnetId] = set()                # to reconcile at the next refresh
        self._watching = False                          # the event fd is on the loop
        self._next_error_log = 0.0

    # -- loading ---------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self.shim is not None

    def configure(self, config: ShimConfig | None, now: float) -> bool:
        """Load the shim for ``config`` (None: no underlay address yet), or
        load it again when the underlay or the address changed; False when
        it was tried and could not load (``reason`` says why)."""
        if self.off_reason is not None or config == self.config:
            return True
        if config is None:
            return True       # keep what runs until an address is known again
        if self.shim is not None:
            log.info("kernel path: the underlay is now %s, %s: loading again",
                     config.underlay, config.local_addr)
            # Another device: what is on the old one goes (the new load
            # would not find it); the same one: it is adopted again.
            self._leave_all()
            self._close_shim(purge=config.underlay != self.config.underlay)
        self.config = config
        try:
            shim = self.opener(config)
        except KernelPathUnavailable as e:
            self.reason = e.reason
            log.warning("kernel path unavailable: %s; every vnet runs in user space", e.reason)
            return False
        self.shim = shim
        self.core.mirror_tables()
        self._watch_events(True)
        self._adopt(now)
        return True

    def _adopt(self, now: float) -> None:
        """What the previous engine (or our own previous load) left, kept
        until its vnets are added again (``attach``) or for a VARP TTL."""
        shim = self.shim
        try:
            left = shim.attached()
            remotes = shim.remotes()
            locals_ = shim.locals()
        except KernelPathUnavailable as e:
            self._failed("reading the kernel's maps", e)
            left, remotes, locals_ = {}, {}, set()
        self.adopted = bool(left)
        self._left = dict(left)
        self._left_remotes = {vid: {} for vid in left}
        for (vid, mac), value in remotes.items():
            self._left_remotes.setdefault(vid, {})[mac] = value
        self._left_locals = {vid: set() for vid in left}
        for vid, mac in locals_:
            self._left_locals.setdefault(vid, set()).add(mac)
        self._left_until = now + self.core.options.varp_ttl
        log.info("kernel path loaded%s", f", adopting {len(left)} vnets" if left else "")
        for vnet in self.core.vnets():      # loaded again: every vnet that may goes on it
            self._attach(vnet.vid, now)

    # -- DataPath --------------------------------------------------------------------------

    def attach(self, vid: VnetId, ifname: str) -> None:
        """Put a vnet the core has just added (its TAP ``ifname`` open) on the
        kernel path, unless it is secured or the path is not loaded; never
        raises: a refusal leaves the vnet in user space with the reason."""
        try:
            self._attach(vid, self.clock())
        except Exception as e:  # noqa: BLE001 -- the vnet is up: it stays in user space
            self._error(f"attaching vnet {vid.canonical}")
            if vid in self._attached:
                self._dirty.add(vid)        # attached: its maps made whole at the refresh
            else:
                self._refused[vid] = f"attach failed: {e!r}"
        if vid in self._attached:
            self._follow_bridges()

    def _attach(self, vid: VnetId, now: float) -> None:
        self._refused.pop(vid, None)
        self._no_tap.discard(vid)
        vnet = self.core.vnet(vid)
        shim = self.shim
        if shim is None or vnet is None:
            return
        if vnet.keys is not None:
            self._refused[vid] = "secured vnet"
            self._drop_left(vid)
            return
        tap = self.userspace.taps.by_vid.get(vid)
        if tap is None:
            self._refused[vid] = "its TAP is missing (made again at the next refresh)"
            self._no_tap.add(vid)
            return
        self.sync()             # the other vnets' changes first: this one's are made whole below
        try:
            shim.attach(vid, tap.index)
        except KernelPathUnavailable as e:
            self._refused[vid] = e.reason
            log.warning("vnet %s stays in user space: %s", vid.canonical, e.reason)
            return
        self._attached[vid] = tap.index
        self.userspace.perform(self.core.set_kernel(vid, True, now))
        held: dict[bytes, tuple[str, bool]] = {}
        held_locals: set[bytes] = set()
        left_on = self._left.pop(vid, None)
        if left_on is not None:
            # Added again after a restart: what the kernel held is taken as learned.
            held = self._left_remotes.pop(vid, {})
            held_locals = self._left_locals.pop(vid, set())
            actions: list = []
            for mac, (addr, peer) in held.items():
                actions += self.core.kernel_adopt(vid, mac, addr, peer, now)
            for mac in held_locals:
                actions += self.core.kernel_local_seen(vid, mac, now)
            if actions:
                self.userspace.perform(actions)
        if left_on != tap.index:
            held, held_locals = {}, set()   # on another TAP: the shim emptied its maps
        self._reconcile(vid, now, {(vid, mac): v for mac, v in held.items()},
                        {(vid, mac) for mac in held_locals})
        if held or held_locals:
            # where their use stamps stand now: a later change is a use
            self._read_used([(VARP, (vid, mac)) for mac in held] +
                            [(VIF, (vid, mac)) for mac in held_locals], now)
        self.sync()

    def detach(self, vid: VnetId) -> None:
        """Take the vnet off the kernel path, its map entries with it (vnet.del)."""
        self._refused.pop(vid, None)
        self._drop_left(vid)
        if self._attached.pop(vid, None) is None:
            return
        if self.core.has_vnet(vid):
            self.core.set_kernel(vid, False)
        self._forget(vid)
        if self.shim is not None:
            try:
                self.shim.detach(vid)
            except KernelPathUnavailable as e:
                self._failed(f"detaching vnet {vid.canonical}", e)

    def _forget(self, vid: VnetId) -> None:
        """Drop what we knew of the vnet's map entries (the shim drops them)."""
        for key in [k for k in self._remotes if k[0] == vid]:
            addr, _ = self._remotes.pop(key)
            self._unindex(vid, key[1], addr)
        self._locals = {k for k in self._locals if k[0] != vid}
        self._used = {k: v for k, v in self._used.items() if k[1][0] != vid}
        self._dirty.discard(vid)

    def _drop_left(self, vid: VnetId) -> None:
        """The previous engine's entries of a vnet this engine will not carry."""
        if self._left.pop(vid, None) is None:
            return
        self._left_remotes.pop(vid, None)
        self._left_locals.pop(vid, None)
        if self.shim is not None:
            try:
                self.shim.detach(vid)
            except KernelPathUnavailable as e:
                self._failed(f"detaching vnet {vid.canonical}", e)
            else:
                log.info("kernel path: vnet %s, left by the previous engine, detached",
                         vid.canonical)

    def table_changed(self, changes: Sequence[TableChange]) -> None:
        """Apply the core's table changes to the maps of the vnets attached."""
        attached = self._attached
        for change in changes:
            vid = change.vid
            if vid not in attached:
                continue
            if change.table == VARP:
                if change.present:
                    self._set_remote(vid, change.mac, change.addr)
                else:
                    self._del_remote(vid, change.mac)
            elif change.table == VIF:
                if change.present:
                    self._set_local(vid, change.mac)
                else:
                    self._del_local(vid, change.mac)
            elif change.table == KERNEL_PEER:
                for mac in list(self._macs_at.get((vid, change.addr), ())):
                    self._set_remote(vid, mac, change.addr)

    def sync(self, _now: float = 0.0) -> None:
        """Apply what the core reported since the last call (after every wakeup);
        a failure never stops the engine: the maps are made whole at the refresh."""
        changes = self.core.drain_table_changes()
        if changes and self._attached:
            try:
                self.table_changed(changes)
            except Exception:  # noqa: BLE001 -- a bug here must not stop the data path
                self._error("applying the table changes")
                self._dirty.update(self._attached)

    def pending(self) -> float | None:
        """The event loop's deadline for ``sync``: now when changes wait."""
        return 0.0 if self.core.table_changes else None

    def counters(self) -> dict[str, int]:
        """Totals over the vnets attached (engine.status)."""
        totals = {"kernel-encapsulated": 0, "kernel-decapsulated": 0}
        for values in self.vnet_counters().values():
            totals["kernel-encapsulated"] += values.get("encapsulated", 0)
            totals["kernel-decapsulated"] += values.get("decapsulated", 0)
        return totals

    def vnet_counters(self) -> dict[VnetId, dict[str, int]]:
        """The programs' counters of each vnet attached (vnet.stats)."""
        if self.shim is None or not self._attached:
            return {}
        try:
            found = self.shim.counters()
        except KernelPathUnavailable as e:
            self._failed("reading the counters", e)
            return {}
        return {vid: values for vid, values in found.items() if vid in self._attached}

    def status(self, vid: VnetId) -> PathStatus | None:
        if self.shim is not None and vid in self._attached:
            return PathStatus(self.name, "kernel")
        return None

    def why_not(self, vid: VnetId) -> str:
        """Why a vnet of the core is not on the kernel path (for ``vn status``)."""
        if self.shim is None:
            return self.reason
        return self._refused.get(vid, "not attached")

    def close(self) -> None:
        """The engine stops: programs and maps stay in the kernel (design.md 5)."""
        if self.shim is not None:
            self._close_shim()
            log.info("kernel path left in place for the next engine")

    def _leave_all(self) -> None:
        """Every vnet back to user space alone, and said so to the others
        (``EngineCore.set_kernel``): the kernel path goes away while we run."""
        now = self.clock()
        for vid in list(self._attached):
            if self.core.has_vnet(vid):
                self.userspace.perform(self.core.set_kernel(vid, False, now))
            self._forget(vid)
        self._attached.clear()
        self._refused.clear()
        self._no_tap.clear()
        self._dirty.clear()
        self._left.clear()
        self._left_remotes.clear()
        self._left_locals.clear()

    def _close_shim(self, purge: bool = False) -> None:
        self._watch_events(False)
        shim, self.shim = self.shim, None
        self.config = None
        self.reason = "closed"
        if purge:
            try:
                shim.purge()
                return
            except KernelPathUnavailable as e:
                log.warning("kernel path: cannot remove it from the old underlay: %s", e.reason)
        shim.close()

    def purge(self) -> None:
        """Remove everything the kernel path put in the kernel; the engine
        goes on in user space (``vn rmmod --purge``)."""
        shim = self.shim
        if shim is None:
            return
        self._leave_all()
        self._watch_events(False)
        self.shim = None
        self.off_reason = self.reason = "purged (vn rmmod --purge)"
        try:
            shim.purge()
        except KernelPathUnavailable as e:
            log.error("kernel path: purge failed: %s", e.reason)
            raise
        log.info("kernel path purged")

    # -- what the kernel reports -----------------------------------------------------------

    def _on_events(self, _mask: int, now: float) -> None:
        shim = self.shim
        if shim is None:
            return
        try:
            events = shim.events()
        except KernelPathUnavailable as e:
            # Not read, the fd stays readable: off the loop until the refresh.
            self._failed("reading its events", e)
            self._watch_events(False)
            return
        core = self.core
        actions: list = []
        for event in events:
            try:
                if event.__class__ is RemoteSeen:
                    actions += core.kernel_remote_seen(event.vid, event.mac, event.addr, now)
                else:
                    actions += core.kernel_local_seen(event.vid, event.mac, now)
            except Exception:  # noqa: BLE001 -- one bad report must not stop the engine
                self._error("a report of the kernel path")
        if actions:
            self.userspace.perform(actions)
        self.sync()

    def _watch_events(self, on: bool) -> None:
        """The shim's event fd on the event loop, or off it."""
        if on == self._watching or self.shim is None:
            return
        fd = self.shim.event_fd()
        if on:
            self.loop.register(fd, self._on_events)
        else:
            try:
                self.loop.unregister(fd)
            except (KeyError, ValueError, OSError):
                pass
        self._watching = on

    # -- the periodic refresh --------------------------------------------------------------

    def refresh(self, now: float) -> None:
        """Follow recreated TAPs, retry what failed, detach what the previous
        engine left and nobody added, keep the entries the kernel uses from
        ageing, and let the kernel ports follow the bridges."""
        if self.shim is None:
            return
        self._watch_events(True)
        taps = self.userspace.taps.by_vid
        for vid, index in list(self._attached.items()):
            tap = taps.get(vid)
            if tap is not None and tap.index != index:
                log.info("vnet %s: its TAP %s was made again: attached anew", vid.canonical,
                         tap.ifname)
                self._attached.pop(vid)
                self._forget(vid)
                self._attach(vid, now)
        for vid in list(self._no_tap):
            if vid in taps:
                self._attach(vid, now)
        for vid in list(self._dirty):
            if vid in self._attached:
                self._reconcile(vid, now)
        if self._left and now >= self._left_until:
            for vid in list(self._left):
                self._drop_left(vid)
        self._keep_used(now)
        self._follow_bridges()

    def _follow_bridges(self) -> None:
        """The kernel ports follow their TAPs' bridges, and their fdb entries
        the bridges' changes (KernelShim.refresh); a failure is counted and
        tried again at the next refresh, the engine goes on."""
        if self.shim is None:
            return
        try:
            self.shim.refresh()
        except KernelPathUnavailable as e:
            self._failed("following the bridges", e)
        except Exception:  # noqa: BLE001 -- a bug here must not stop the engine
            self._error("following the bridges")

    def _keep_used(self, now: float) -> None:
        """Ageing (above): the use stamps of entries the core has not seen
        refreshed for half a TTL, read at most every quarter TTL each and
        USE_READS in all, oldest first; those that moved are refreshed."""
        opts = self.core.options
        due: list[UseKey] = []
        changes: dict[UseKey, TableChange] = {}
        for change in self.core.idle_entries(now, opts.varp_ttl / 2, opts.vif_ttl / 2):
            if len(due) >= USE_READS:
                break
            key = (change.vid, change.mac)
            if change.table == VARP:
                held = self._remotes.get(key)
                if held is None or held[0] != change.addr:
                    continue        # not in the map at that address: nothing to stamp
                ttl = opts.varp_ttl
            elif key in self._locals:
                ttl = opts.vif_ttl
            else:
                continue
            use_key = (change.table, key)
            last = self._used.get(use_key)
            if last is not None and now - last[1] < ttl / 4:
                continue
            due.append(use_key)
            changes[use_key] = change
        if not due:
            return
        for use_key in self._read_used(due, now):
            self.core.kernel_used(changes[use_key], now)

    def _read_used(self, keys: list[UseKey], now: float) -> list[UseKey]:
        """Read the use stamps of ``keys``; the keys whose stamp moved since
        the last reading (or since we wrote the entry)."""
        try:
            found = {(VARP, k): v for k, v in self.shim.remotes_used(
                [k for table, k in keys if table == VARP]).items()}
            found.update({(VIF, k): v for k, v in self.shim.locals_used(
                [k for table, k in keys if table == VIF]).items()})
        except KernelPathUnavailable as e:
            self._failed("reading the use stamps", e)
            return []
        moved = []
        for use_key in keys:
            stamp = found.get(use_key)
            if stamp is None:
                self._used.pop(use_key, None)
                continue
            last = self._used.get(use_key)
            if last is not None and last[0] != stamp:
                moved.append(use_key)
            self._used[use_key] = (stamp, now)
        return moved

    # -- the maps ----------------------------------------------------------------------------

    def _reconcile(self, vid: VnetId, now: float,
                   remotes: dict[RemoteKey, tuple[str, bool]] | None = None,
                   locals_: set[RemoteKey] | None = None) -> None:
        """Make the vnet's map entries what the core's tables say, from what
        the maps hold (given, at an attach: nothing, or what a previous engine
        left; else read, after a failed update)."""
        self._dirty.discard(vid)
        if remotes is None or locals_ is None:
            try:
                remotes = {k: v for k, v in self.shim.remotes().items() if k[0] == vid}
                locals_ = {k for k in self.shim.locals() if k[0] == vid}
            except KernelPathUnavailable as e:
                self._failed(f"reading the maps of vnet {vid.canonical}", e, vid)
                return
        for key in [k for k in self._remotes if k[0] == vid]:
            self._unindex(vid, key[1], self._remotes.pop(key)[0])
        self._locals = {k for k in self._locals if k[0] != vid}
        self._remotes.update(remotes)
        for (v, mac), (addr, _) in remotes.items():
            self._index(v, mac, addr)
        self._locals |= locals_
        wanted_remotes: dict[RemoteKey, str] = {}
        wanted_locals: set[RemoteKey] = set()
        for change in self.core.table_entries(vid):
            if change.table == VARP:
                wanted_remotes[(vid, change.mac)] = change.addr
            elif change.table == VIF:
                wanted_locals.add((vid, change.mac))
        for key in list(remotes):
            if key not in wanted_remotes:
                self._del_remote(*key)
        for key in locals_ - wanted_locals:
            self._del_local(*key)
        for (v, mac), addr in wanted_remotes.items():
            self._set_remote(v, mac, addr, now)
        for key in wanted_locals:
            self._set_local(*key)
        self._used = {k: v for k, v in self._used.items() if k[1][0] != vid or
                      (k[1] in self._remotes if k[0] == VARP else k[1] in self._locals)}

    def _index(self, vid: VnetId, mac: bytes, addr: str) -> None:
        self._macs_at.setdefault((vid, addr), set()).add(mac)

    def _unindex(self, vid: VnetId, mac: bytes, addr: str) -> None:
        macs = self._macs_at.get((vid, addr))
        if macs is not None:
            macs.discard(mac)
            if not macs:
                del self._macs_at[(vid, addr)]

    def _set_remote(self, vid: VnetId, mac: bytes, addr: str,
                    now: float | None = None) -> None:
        key = (vid, mac)
        peer = self.core.kernel_peer(vid, addr, self.clock() if now is None else now)
        old = self._remotes.get(key)
        if old == (addr, peer):
            return
        try:
            self.shim.set_remote(vid, mac, addr, kernel_peer=peer)
        except KernelPathUnavailable as e:
            self._failed("set_remote", e, vid)
            return
        if old is not None:
            self._unindex(vid, mac, old[0])
        self._remotes[key] = (addr, peer)
        self._used[(VARP, key)] = (0, 0.0)      # written anew: not used yet
        self._index(vid, mac, addr)

    def _del_remote(self, vid: VnetId, mac: bytes) -> None:
        key = (vid, mac)
        old = self._remotes.pop(key, None)
        if old is None:
            return
        self._unindex(vid, mac, old[0])
        self._used.pop((VARP, key), None)
        try:
            self.shim.del_remote(vid, mac)
        except KernelPathUnavailable as e:
            self._failed("del_remote", e, vid)      # reconciled at the next refresh

    def _set_local(self, vid: VnetId, mac: bytes) -> None:
        key = (vid, mac)
        if key in self._locals:
            return
        try:
            self.shim.set_local(vid, mac)
        except KernelPathUnavailable as e:
            self._failed("set_local", e, vid)
            return
        self._locals.add(key)
        self._used[(VIF, key)] = (0, 0.0)

    def _del_local(self, vid: VnetId, mac: bytes) -> None:
        key = (vid, mac)
        if key not in self._locals:
            return
        self._locals.discard(key)
        self._used.pop((VIF, key), None)
        try:
            self.shim.del_local(vid, mac)
        except KernelPathUnavailable as e:
            self._failed("del_local", e, vid)

    def _error(self, what: str) -> None:
        """An unexpected failure (a bug): counted, logged with its traceback at
        most every ERROR_LOG_INTERVAL; the engine goes on."""
        count(self.dropped, "kernel_path_error")
        now = self.clock()
        if now >= self._next_error_log:
            self._next_error_log = now + ERROR_LOG_INTERVAL
            log.exception("kernel path: error on %s", what)

    def _failed(self, what: str, e: KernelPathUnavailable, vid: VnetId | None = None) -> None:
        """A shim call failed: counted, logged at most every ERROR_LOG_INTERVAL,
        and the vnet's entries made right again at the next refresh."""
        count(self.dropped, "kernel_map_failed")
        if vid is not None:
            self._dirty.add(vid)
        now = self.clock()
        if now >= self._next_error_log:
            self._next_error_log = now + ERROR_LOG_INTERVAL
            log.error("kernel path: %s failed: %s", what, e.reason)

    # -- for tests and listings ----------------------------------------------------------------

    def attached_vnets(self) -> Iterable[VnetId]:
        return list(self._attached)
