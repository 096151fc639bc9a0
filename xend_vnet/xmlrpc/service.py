"""What the vnet methods do, independent of XML-RPC (design.md 4, 5).

``VnetService`` owns the table of stored vnets.  Create is atomic: validate,
``vnet.add`` on the engine, create or adopt the bridge, enslave and bring up
the vnetif, persist; a failing step undoes the steps this call made.  Delete
undoes all of it and refuses while domain vifs are on the bridge unless
forced; a bridge that existed before (adopted, and only brought up) is left
in place, so the store records which bridges xend-vnet created.
With vnetd down, delete still forgets the vnet and records that the engine
owes its removal (cleanup.py).  ``reconcile`` brings every stored vnet up
again after an engine restart and never deletes a stored vnet; it removes
what a crash or an outage left in the engine (cleanup.py).

The network and the engine are injected (``net`` is the bridges module or a
test double with the same functions), so the semantics are tested without
root.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Callable

from pyroute2.netlink.exceptions import NetlinkError

from .. import bridges, sdnotify
from ..config import ConfigError, NameIndex, VnetConfig, check_collisions
from ..engine_client import EngineClient, EngineError, EngineUnavailable
from ..store import StoreError, VnetStore, size_problem
from ..vnet_id import VnetId, VnetIdError
from .cleanup import EngineCleanup
from .reconcile import LinkSession
from .engine_forms import EEXIST, ENOENT, add_form, del_form, engine_vnets

log = logging.getLogger("xend-vnet")

# Stored vnets restored under one hold of the lock, on one netlink socket.
RESTORE_EXTEND_USEC = 90_000_000   # systemd's default start timeout, again
RESTORE_BATCH = 100


class VnetFault(Exception):
    """An error the caller gets as XML-RPC Fault 2 (ERROR_GENERIC, protocol.md 10.2)."""


class VnetService:
    """The stored vnets and the operations of the xend vnet API."""

    def __init__(self, store: VnetStore, engine: EngineClient, net=bridges):
        self.store = store
        self.engine = engine
        self.net = net
        # Replaced, never changed in place: listings read it without the lock, so
        # they answer while a restore holds it (design.md 5).
        self.configs: dict[VnetId, VnetConfig] = {}
        self.generation = 0                    # creates and deletes so far
        # canonical id -> why the stored vnet is not up (design.md 5: reported).
        self.problems: dict[str, str] = {}
        self.store_problems: list[str] = []
        self.reconciled = False
        self.lock = threading.RLock()
        self.callers_waiting = 0               # creates and deletes waiting for the lock
        self._waiting_lock = threading.Lock()
        self.cleanup = EngineCleanup(store, engine, net)

    # -- start-up -------------------------------------------------------------

    def load(self) -> list[str]:
        """Read the store; return (and log) what could not be used."""
        configs, problems = self.store.load_all()
        with self.lock:
            loaded: dict[VnetId, VnetConfig] = {}
            names = NameIndex()
            reports = [str(p) for p in problems] + self.cleanup.load()
            for config in configs:
                try:
                    names.check(config)
                except ConfigError as e:
                    reports.append(f"{self.store.path_of(config.vid)}: {e}; not loaded")
                    continue
                names.add(config)
                loaded[config.vid] = config
            self.configs = loaded
            for r in reports:
                log.error("store: %s", r)
            self.store_problems = reports
        return reports

    @contextlib.contextmanager
    def _ahead_of_restore(self):
        """The lock for a create or delete; a restore lets these in between its
        batches (a lock is not fair: it would take it back at once)."""
        with self._waiting_lock:
            self.callers_waiting += 1
        counted = True
        try:
            with self.lock:
                with self._waiting_lock:
                    self.callers_waiting -= 1
                counted = False
                yield
        finally:
            if counted:
                with self._waiting_lock:
                    self.callers_waiting -= 1

    # -- lookups --------------------------------------------------------------

    def _find(self, id_text: object) -> VnetConfig:
        if not isinstance(id_text, str):
            raise VnetFault(f"the vnet id must be a string, not {type(id_text).__name__}")
        try:
            vid = VnetId.parse(id_text)
        except VnetIdError:
            raise VnetFault(f"No such vnet {id_text}") from None
        config = self.configs.get(vid)
        if config is None:
            raise VnetFault(f"No such vnet {id_text}")
        return config

    def ids(self) -> list[str]:
        """Stored ids as written, sorted by canonical id (design.md 4); without the
        lock, so it answers during a restore."""
        configs = self.configs
        return [configs[v].id_text for v in sorted(configs)]

    def get(self, id_text: object) -> list:
        """The stored config, verbatim."""
        return self._find(id_text).sxpr

    def list_all(self) -> list[list]:
        configs = self.configs
        return [configs[v].sxpr for v in sorted(configs)]

    # -- create ---------------------------------------------------------------

    def create(self, config_sxpr: object) -> VnetConfig:
        """Bring a new vnet up and store it, or change nothing (design.md 4)."""
        try:
            config = VnetConfig.from_sxpr(config_sxpr)
        except ConfigError as e:
            log.error("create refused: %s", e)
            raise VnetFault(str(e)) from None
        with self._ahead_of_restore():
            existing = self.configs.get(config.vid)
            if existing is not None:
                log.error("create of vnet %s refused: it already exists", config.id_text)
                raise VnetFault(f"vnet {config.id_text} already exists")
            try:
                check_collisions(config, self.configs.values())
            except ConfigError as e:
                log.error("create of vnet %s refused: %s", config.id_text, e)
                raise VnetFault(str(e)) from None
            too_large = size_problem(config)
            if too_large:
                # Refused now, never stored and then lost at the next start (design.md 4).
                log.error("create refused: %s", too_large)
                raise VnetFault(f"cannot create {too_large}")
            pending = self.cleanup.pending.get(config.vid)
            if pending and (pending.vnetif, pending.data_path) != (config.vnetif,
                                                                   config.data_path):
                # The old device goes first: the new vnet does not reuse it.
                self.cleanup.finish_now(config.vid)
            undo: list[tuple[str, Callable[[], None]]] = []
            try:
                self._bring_up(config, undo, creating=True)
                self.store.save(config)
            except Exception as e:  # noqa: BLE001 - design.md 4: any failure undoes the create
                self._undo(config, undo)
                reason = failure_reason(e)
                log.error("create of vnet %s failed: %s", config.id_text, reason)
                raise VnetFault(f"cannot create vnet {config.id_text}: {reason}") from None
            self.configs = {**self.configs, config.vid: config}
            self.generation += 1
            self.problems.pop(config.canonical, None)
            if pending is None or (pending.vnetif, pending.data_path) == (
                    config.vnetif, config.data_path):
                # Same device: it is in use again.  Another device's removal
                # that finish_now could not complete stays for the reconcile.
                self.cleanup.cancel(config.vid)
        for w in config.warnings():
            log.warning("%s", w)
        log.info("created vnet %s (bridge %s, vnetif %s, security %s, data-path %s)",
                 config.id_text, config.bridge, config.vnetif, config.security,
                 config.data_path)
        return config

    def _bring_up(self, config: VnetConfig, undo: list, creating: bool, net=None,
                  present: dict | None = None, records: list | None = None) -> list[str]:
        """Engine vnet, bridge, vnetif enslaved and up; return the steps that changed
        something, and record how to undo them when creating.  A restore passes its
        links (``net``), the engine's listing (``present``) and ``records``, where
        the bridges it creates are listed to be recorded together."""
        net = net or self.net
        if net.link_exists(config.bridge) and not net.is_bridge(config.bridge):
            raise bridges.BridgeError(config.bridge, "exists and is not a bridge")
        done = []
        if self._engine_add(config, undo if creating else None, present):
            done.append("engine vnet added")
        if self._ensure_bridge(config, undo, creating, net, records):
            done.append("bridge created")
        if net.master_of(config.vnetif) != config.bridge:
            net.enslave(config.bridge, config.vnetif)
            done.append("vnetif enslaved")
            undo.append(("enslave", lambda: self.net.release(config.vnetif)))
        net.set_up(config.vnetif)
        return done

    def _ensure_bridge(self, config: VnetConfig, undo: list, creating: bool,
                       net=None, records: list | None = None) -> bool:
        """Create or adopt the vnet's bridge; True when it was created (and recorded,
        so that delete removes only bridges xend-vnet made)."""
        if (net or self.net).ensure_bridge(config.bridge):
            if records is not None:
                records.append((config.vid, config.bridge))
                return True
            undo.append(("bridge", lambda: self.net.delete_bridge(config.bridge)))
            self.store.record_bridge(config.vid, config.bridge)
            undo.append(("bridge record", lambda: self.store.record_bridge(config.vid, None)))
            return True
        if creating:
            # Adopted: delete leaves it in place (a stale record would not).
            self.store.record_bridge(config.vid, None)
        return False

    def _engine_add(self, config: VnetConfig, undo: list | None,
                    present: dict | None = None) -> bool:
        """``vnet.add``; False when the engine already had it with the same parameters
        (known from ``present``, the engine's listing, without asking again)."""
        if present is not None and config.canonical in present:
            self._check_same(config, present[config.canonical])
            return False
        try:
            self.engine.call(add_form(config))
        except EngineError as e:
            if e.errno != EEXIST:
                raise
            # design.md 5: "exists with the same parameters" is success.
            there = engine_vnets(self.engine.call(["vnet.list"])).get(config.canonical)
            if there is None:
                # EEXIST for something else (e.g. the vnetif belongs to another
                # vnet): the engine's own message says what.
                raise
            self._check_same(config, there)
            return False
        if undo is not None:
            undo.append(("engine", lambda: self.engine.call(del_form(config.canonical))))
        return True

    @staticmethod
    def _check_same(config: VnetConfig, present: tuple[str, str, str]) -> None:
        """design.md 5: the engine's vnet counts only with the same parameters."""
        if present != (config.vnetif, config.security, config.data_path):
            raise VnetFault(f"the engine already has vnet {config.canonical} with vnetif "
                            f"{present[0]}, security {present[1]}, data-path "
                            f"{present[2]}")

    def _undo(self, config: VnetConfig, undo: list) -> None:
        for what, step in reversed(undo):
            try:
                step()
            except Exception as e:  # noqa: BLE001 - the other steps are still undone
                log.error("vnet %s: undoing %s failed: %s", config.id_text, what,
                          failure_reason(e))

    # -- delete ---------------------------------------------------------------

    def delete(self, id_text: object, force: bool = False) -> str | None:
        """Take the vnet down and forget it (design.md 4); with vnetd down, return
        what is left for the engine's next answer (design.md 5)."""
        if not isinstance(force, bool):
            raise VnetFault(f"force must be a boolean, not {type(force).__name__}")
        with self._ahead_of_restore():
            config = self._find(id_text)
            bridge_there, attached = self._bridge_ports(config)
            if attached and not force:
                log.error("delete of vnet %s refused: %s attached", config.id_text,
                          ", ".join(attached))
                raise VnetFault(attached_message(config, attached))
            engine_down = self._engine_delete(config)
            # Only a bridge xend-vnet created goes; an adopted one stays.
            ours = bridge_there and self.store.created_bridge(config.vid) == config.bridge
            try:
                if engine_down:
                    # Written first: a vnet forgotten always leaves its record.
                    self.cleanup.record(config)
                if ours:
                    self.net.delete_bridge(config.bridge)
                self.store.delete(config.vid)
            except (bridges.BridgeError, StoreError) as e:
                # The stored config stays, so a retry (or reconcile) finds it.
                log.error("delete of vnet %s failed: %s", config.id_text, e)
                raise VnetFault(f"cannot delete vnet {config.id_text}: {e}") from None
            self.configs = {v: c for v, c in self.configs.items() if v != config.vid}
            self.generation += 1
            self.problems.pop(config.canonical, None)
        log.info("deleted vnet %s%s%s", config.id_text, " (forced)" if force else "",
                 "" if ours or not bridge_there else
                 f"; bridge {config.bridge} kept: it existed before the vnet")
        if not engine_down:
            return None
        later = (f"{engine_down}; xend-vnet removes its {device_kind(config.data_path)} "
                 f"{config.vnetif} when it next finds vnetd answering")
        log.warning("vnet %s: %s", config.id_text, later)
        return later

    def _bridge_ports(self, config: VnetConfig) -> tuple[bool, list[str]]:
        """Whether the vnet's bridge is there, and the ports on it but the vnetif."""
        try:
            there = self.net.link_exists(config.bridge) and self.net.is_bridge(config.bridge)
            ports = self.net.bridge_ports(config.bridge) if there else []
        except bridges.BridgeError as e:
            raise VnetFault(f"cannot delete vnet {config.id_text}: {e}") from None
        return there, [p for p in ports if p != config.vnetif]

    def _engine_delete(self, config: VnetConfig) -> str | None:
        """``vnet.del``; the reason when vnetd does not answer, else None."""
        try:
            self.engine.call(del_form(config.canonical))
        except EngineUnavailable as e:
            return e.message
        except EngineError as e:
            if e.errno != ENOENT:
                log.error("delete of vnet %s failed: %s", config.id_text, e.message)
                raise VnetFault(f"cannot delete vnet {config.id_text}: {e.message}") from None
        return None

    # -- reconcile ------------------------------------------------------------

    def needs_reconcile(self) -> bool:
        """True when a stored vnet is missing from the engine, off its bridge, or was
        reported down, or the engine has something to clean up (cleanup.py); raises
        EngineError when the engine does not answer."""
        with self.lock:
            configs = list(self.configs.values())
            reported = bool(self.problems)
        listing = self.engine.call(["vnet.list"])
        if reported:
            return True
        with self.lock:
            if self.cleanup.needed(self.configs, listing):
                return True
        present = engine_vnets(listing)
        if any(c.canonical not in present for c in configs):
            return True
        with self.net.batch() as net:      # one link dump, not two sockets per vnet
            return any(not net.link_exists(c.vnetif) or net.master_of(c.vnetif) != c.bridge
                       for c in configs)

    def reconcile(self, stopping: Callable[[], bool] | None = None) -> dict[str, str]:
        """Remove what the engine should not have (cleanup.py), then bring every
        stored vnet up; return {canonical id: reason} for those that stay down.
        Never deletes a stored vnet (design.md 5).  The lock is taken per batch of
        RESTORE_BATCH vnets, so a create or delete during a long restore waits for
        one batch, not for all; ``stopping`` ends the restore between batches."""
        with self.lock:
            listing = self._listing()
            if listing is not None:
                self.cleanup.run(self.configs, listing)
            todo = sorted(self.configs)
            generation = self.generation
        problems: dict[str, str] = {}
        links = LinkSession(self.net)
        try:
            for start in range(0, len(todo), RESTORE_BATCH):
                while self.callers_waiting and not (stopping and stopping()):
                    time.sleep(0.001)       # their turn first (_ahead_of_restore)
                if stopping is not None and stopping():
                    break
                with self.lock:
                    if generation != self.generation:
                        # A create or delete since: the listing and the links are stale.
                        listing = self._listing() if listing is not None else None
                        generation = self.generation
                        links.close()
                    configs = self.configs
                    batch = [configs[v] for v in todo[start:start + RESTORE_BATCH]
                             if v in configs]
                    self._restore_batch(batch, listing, links, problems)
                # READY waits for the whole restore (design.md 5): each batch
                # done buys the unit another start timeout, however many vnets.
                sdnotify.notify(f"EXTEND_TIMEOUT_USEC={RESTORE_EXTEND_USEC}")
        finally:
            links.close()
        with self.lock:
            # A vnet deleted during the restore is no one's problem any more.
            self.problems = {c: r for c, r in problems.items()
                             if VnetId.parse(c) in self.configs}
            self.reconciled = True
            return dict(self.problems)

    def _listing(self) -> list | None:
        try:
            return self.engine.call(["vnet.list"])
        except EngineError:
            return None      # each vnet reports the engine's state

    def _restore_batch(self, batch: list[VnetConfig], listing: list | None,
                       links: LinkSession, problems: dict[str, str]) -> None:
        """Bring one batch up on the restore's netlink socket, asking the engine only
        for the vnets its listing lacks; the batch's bridge records are written
        with one flush."""
        present = engine_vnets(listing) if listing is not None else None
        try:
            net = links.open()
        except Exception as e:  # noqa: BLE001 - design.md 5: reported, never fatal
            for config in batch:
                problems[config.canonical] = self._restore_failed(config, e)
            return
        records: list[tuple[VnetId, str]] = []
        for config in batch:
            try:
                done = self._bring_up(config, [], False, net, present, records)
            except Exception as e:  # noqa: BLE001 - design.md 5: reported, never fatal
                problems[config.canonical] = self._restore_failed(config, e, net)
                continue
            if done or not self.reconciled:
                log.info("restored vnet %s (bridge %s, vnetif %s)%s", config.id_text,
                         config.bridge, config.vnetif, f": {', '.join(done)}" if done else "")
        try:
            self.store.record_bridges(records)
        except StoreError as e:
            for vid, _ in records:
                problems[vid.canonical] = self._restore_failed(self.configs[vid], e)

    def _restore_failed(self, config: VnetConfig, e: Exception, net=None) -> str:
        """Why a stored vnet stays down, logged when it changed."""
        reason = failure_reason(e)
        if isinstance(e, EngineUnavailable):
            # Domains started before the engine still find their
            # bridge; the engine's interface joins it later.
            try:
                self._ensure_bridge(config, [], False, net)
            except Exception as be:  # noqa: BLE001 - reported with the engine's state
                reason = f"{reason}; bridge: {failure_reason(be)}"
        if self.problems.get(config.canonical) != reason:
            log.error("restore of vnet %s failed: %s", config.id_text, reason)
        return reason

    def status(self) -> dict:
        """What ``xend-vnet status`` shows."""
        with self.lock:
            return {
                "vnets": self.ids(),
                "problems": [f"vnet {self.configs[v].id_text}: {self.problems[v.canonical]}"
                             for v in sorted(self.configs) if v.canonical in self.problems],
                "store_problems": list(self.store_problems),
                "pending_removals": [f"vnet {r.vid}: {device_kind(r.data_path)} {r.vnetif}"
                                     for _, r in sorted(self.cleanup.pending.items())],
            }


def failure_reason(e: Exception) -> str:
    """An operator's sentence for any failure of a step: the engine's message, a
    netlink or OS error with its errno name, else the exception's own text."""
    if isinstance(e, EngineError):
        return e.message
    if isinstance(e, (VnetFault, bridges.BridgeError, StoreError)):
        return str(e)
    if isinstance(e, NetlinkError) and e.args:
        code = e.args[0]
        text = e.args[1] if len(e.args) > 1 else os.strerror(code)
        return f"netlink: {text} ({errno.errorcode.get(code, code)})"
    if isinstance(e, OSError) and e.errno is not None:
        where = f" ({e.filename})" if e.filename else ""
        return (f"{e.strerror or os.strerror(e.errno)} "
                f"({errno.errorcode.get(e.errno, e.errno)}){where}")
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def device_kind(data_path: str) -> str:
    """What a vnet's device is on its data path (docs/vxlan.md)."""
    return "VXLAN device" if data_path == "vxlan" else "TAP"


def attached_message(config: VnetConfig, attached: list[str]) -> str:
    """Fault 2 of a delete refused for attached vifs, with ways through that work
    from any xm (Xen's own has no --force; design.md 4)."""
    return (f"vnet {config.id_text} has domain interfaces attached to bridge "
            f"{config.bridge}: {', '.join(attached)}; detach them first "
            "(xm network-detach DOMAIN DEVID, or shut their domains down), or delete it "
            f"anyway with xend-vnet delete --force {config.id_text} on this host (or "
            f"xend-vnet's xm vnet-delete --force {config.id_text})")
