"""What a crash or an engine outage left in the engine, removed (design.md 5).

Two jobs of the reconcile, run under the service's lock, so a create in the
same server is either finished (stored) or not begun:

* a vnet the engine lists with ``(owner xend-vnet)`` that the store does not
  have was left by a create that did not finish (the server died half-way):
  it is deleted from the engine, and a bridge recorded for it that has no
  ports left goes too;
* a pending removal (``<dbid>.deleted``: a delete answered while vnetd was
  down) is finished once the engine answers: the engine's vnet deleted if
  it has it, the persistent device deleted if it is still there, the record
  dropped.  A new create of the id cancels it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from .. import bridges
from ..config import VnetConfig
from ..engine_client import EngineClient, EngineError
from ..store import PendingRemoval, StoreError, VnetStore
from ..vnet_id import VnetId
from .engine_forms import ENOENT, del_form, engine_vnets, owned_vnets

log = logging.getLogger("xend-vnet")


class EngineCleanup:
    """The pending removals of one store, and the removal of half-made vnets."""

    def __init__(self, store: VnetStore, engine: EngineClient, net=bridges):
        self.store = store
        self.engine = engine
        self.net = net
        self.pending: dict[VnetId, PendingRemoval] = {}
        self.failures: dict[str, str] = {}     # canonical id -> last failure logged

    def load(self) -> list[str]:
        """Read the pending removals; return what could not be used (moved aside)."""
        removals, problems = self.store.pending_removals()
        self.pending = {r.vid: r for r in removals}
        return [str(p) for p in problems]

    def record(self, config: VnetConfig) -> None:
        """Remember durably that the engine still owes this vnet's removal."""
        removal = PendingRemoval(config.vid, config.vnetif, config.data_path)
        self.store.record_removal(removal)
        self.pending[config.vid] = removal

    def cancel(self, vid: VnetId) -> None:
        """The vnet is stored again: its pending removal is void."""
        if vid not in self.pending:
            return
        try:
            self.store.drop_removal(vid)
        except StoreError as e:
            # The next reconcile finds the vnet stored and tries again.
            log.error("vnet %s: %s", vid, e)
            return
        del self.pending[vid]
        self.failures.pop(vid.canonical, None)
        log.info("vnet %s: the pending removal of its device is cancelled: it is "
                 "stored again", vid)

    def orphans(self, stored: Collection[VnetId], listing: list) -> list[VnetId]:
        """Engine vnets marked as ours that are neither stored nor pending removal."""
        known = {v.canonical for v in stored} | {v.canonical for v in self.pending}
        found = [VnetId.parse(c) for c in sorted(owned_vnets(listing) - known)]
        # A stored file that did not load (a collision, or one moved aside as
        # unreadable: a passing read error, a config of a newer version) is
        # still the operator's: its vnet stays in the engine.
        return [v for v in found if not self.store.had_config(v)]

    def needed(self, stored: Collection[VnetId], listing: list) -> bool:
        return bool(self.pending) or bool(self.orphans(stored, listing))

    def run(self, configs: dict[VnetId, VnetConfig], listing: list) -> None:
        """Both jobs, given the engine's ``(vnet.list)`` reply."""
        # Orphans first, while the pending removals still account for theirs:
        # the listing does not change as the removals below finish.
        orphans = self.orphans(configs, listing)
        for vid in sorted(self.pending):
            removal = self.pending[vid]
            config = configs.get(vid)
            if config is None:
                self._finish(removal, listing, engine_too=True)
            elif (config.vnetif, config.data_path) == (removal.vnetif, removal.data_path):
                self.cancel(vid)
            else:
                # Stored again on another device: only the old device goes.
                self._finish(removal, listing, engine_too=False)
        for vid in orphans:
            self._remove_orphan(vid)

    def finish_now(self, vid: VnetId) -> None:
        """Finish one pending removal before a create of the same id on another
        device; an engine that does not answer leaves it pending."""
        removal = self.pending.get(vid)
        if removal is None:
            return
        try:
            listing = self.engine.call(["vnet.list"])
        except EngineError:
            return
        self._finish(removal, listing, engine_too=True)

    def _finish(self, removal: PendingRemoval, listing: list, engine_too: bool) -> None:
        vid = removal.vid
        present = engine_vnets(listing)
        done = []
        try:
            if engine_too and present.get(vid.canonical, ("",))[0] == removal.vnetif:
                self._engine_del(vid)
                done.append("vnet deleted from vnetd")
            # A device the engine uses (for another vnet now) is never touched.
            if all(p[0] != removal.vnetif for p in present.values()):
                done.append(self._delete_device(removal))
            self.store.drop_removal(vid)
        except (EngineError, bridges.BridgeError, StoreError) as e:
            reason = e.message if isinstance(e, EngineError) else str(e)
            self._failed(vid, f"cannot finish its removal: {reason}; trying again")
            return
        del self.pending[vid]
        self.failures.pop(vid.canonical, None)
        log.info("vnet %s: removal finished now that vnetd answers: %s", vid,
                 ", ".join(d for d in done if d) or "nothing was left")

    def _delete_device(self, removal: PendingRemoval) -> str:
        name = removal.vnetif
        try:
            if removal.data_path == "vxlan":
                gone = self.net.delete_vxlan_device(name, removal.vid)
                return f"VXLAN device {name} deleted" if gone else ""
            return f"TAP {name} deleted" if self.net.delete_tap(name) else ""
        except bridges.NotOurs as e:
            log.warning("vnet %s: %s", removal.vid, e)
            return ""

    def _engine_del(self, vid: VnetId) -> None:
        try:
            self.engine.call(del_form(vid.canonical))
        except EngineError as e:
            if e.errno != ENOENT:
                raise

    def _remove_orphan(self, vid: VnetId) -> None:
        try:
            self._engine_del(vid)
            bridge = self.store.created_bridge(vid)
            if bridge and self.net.is_bridge(bridge) and not self.net.bridge_ports(bridge):
                self.net.delete_bridge(bridge)
            self.store.record_bridge(vid, None)
        except (EngineError, bridges.BridgeError, StoreError) as e:
            reason = e.message if isinstance(e, EngineError) else str(e)
            self._failed(vid, f"cannot remove it from vnetd: {reason}")
            return
        self.failures.pop(vid.canonical, None)
        log.warning("vnet %s removed from vnetd: it was marked as xend-vnet's but is not "
                    "stored, so a create did not finish (its device went with it)", vid)

    def _failed(self, vid: VnetId, reason: str) -> None:
        if self.failures.get(vid.canonical) != reason:
            log.error("vnet %s: %s", vid, reason)
            self.failures[vid.canonical] = reason
