"""What the vnet methods do, independent of XML-RPC (design.md 4, 5).

``VnetService`` owns the table of stored vnets.  Create is atomic: validate,
``vnet.add`` on the engine, create or adopt the bridge, enslave and bring up
the vnetif, persist; a failing step undoes the steps this call made.  Delete
undoes all of it and refuses while domain vifs are on the bridge unless
forced; a bridge that existed before (adopted, and only brought up) is left
in place, so the store records which bridges xend-vnet created.
``reconcile`` brings every stored vnet up again after an engine restart and
never deletes anything.

The network and the engine are injected (``net`` is the bridges module or a
test double with the same functions), so the semantics are tested without
root.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .. import bridges
from ..config import ConfigError, VnetConfig, check_collisions
from ..engine_client import EngineClient, EngineError, EngineUnavailable
from ..store import StoreError, VnetStore
from ..vnet_id import VnetId, VnetIdError

log = logging.getLogger("xend-vnet")

EEXIST = 17
ENOENT = 2


class VnetFault(Exception):
    """An error the caller gets as XML-RPC Fault 2 (ERROR_GENERIC, protocol.md 10.2)."""


def engine_vnets(reply: list[object]) -> dict[str, tuple[str, str, str]]:
    """``(vnet.list)`` reply forms -> {canonical id: (vnetif, security, data path)};
    an engine that lists no data path runs every vnet itself (vnetd)."""
    out: dict[str, tuple[str, str, str]] = {}
    for form in reply:
        if not (isinstance(form, list) and form[:1] == ["vnet"]):
            continue
        fields = {c[0]: c[1] if len(c) > 1 else "" for c in form[1:]
                  if isinstance(c, list) and c and isinstance(c[0], str)}
        try:
            vid = VnetId.parse(str(fields.get("id", "")))
        except VnetIdError:
            continue
        out[vid.canonical] = (str(fields.get("vnetif", "")), str(fields.get("security", "none")),
                              str(fields.get("data-path", "vnetd")))
    return out


def add_form(config: VnetConfig) -> list:
    """The ``vnet.add`` command for a config (design.md 6; explicit vnetif, protocol.md 16)."""
    form = ["vnet.add", ["id", config.canonical], ["vnetif", config.vnetif],
            ["security", config.security]]
    if config.key_file:
        form.append(["key-file", config.key_file])
    if config.data_path != "vnetd":
        # Only when asked: an engine without the option still takes every other config.
        form.append(["data-path", config.data_path])
    return form


class VnetService:
    """The stored vnets and the operations of the xend vnet API."""

    def __init__(self, store: VnetStore, engine: EngineClient, net=bridges):
        self.store = store
        self.engine = engine
        self.net = net
        self.configs: dict[VnetId, VnetConfig] = {}
        # canonical id -> why the stored vnet is not up (design.md 5: reported).
        self.problems: dict[str, str] = {}
        self.store_problems: list[str] = []
        self.reconciled = False
        self.lock = threading.RLock()

    # -- start-up -------------------------------------------------------------

    def load(self) -> list[str]:
        """Read the store; return (and log) what could not be used."""
        configs, problems = self.store.load_all()
        with self.lock:
            self.configs = {}
            reports = [str(p) for p in problems]
            for config in configs:
                try:
                    check_collisions(config, self.configs.values())
                except ConfigError as e:
                    reports.append(f"{self.store.path_of(config.vid)}: {e}; not loaded")
                    continue
                self.configs[config.vid] = config
            for r in reports:
                log.error("store: %s", r)
            self.store_problems = reports
        return reports

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
        """Stored ids as written, sorted by canonical id (design.md 4)."""
        with self.lock:
            return [self.configs[v].id_text for v in sorted(self.configs)]

    def get(self, id_text: object) -> list:
        """The stored config, verbatim."""
        with self.lock:
            return self._find(id_text).sxpr

    def list_all(self) -> list[list]:
        with self.lock:
            return [self.configs[v].sxpr for v in sorted(self.configs)]

    # -- create ---------------------------------------------------------------

    def create(self, config_sxpr: object) -> VnetConfig:
        """Bring a new vnet up and store it, or change nothing (design.md 4)."""
        try:
            config = VnetConfig.from_sxpr(config_sxpr)
        except ConfigError as e:
            log.error("create refused: %s", e)
            raise VnetFault(str(e)) from None
        with self.lock:
            existing = self.configs.get(config.vid)
            if existing is not None:
                log.error("create of vnet %s refused: it already exists", config.id_text)
                raise VnetFault(f"vnet {config.id_text} already exists")
            try:
                check_collisions(config, self.configs.values())
            except ConfigError as e:
                log.error("create of vnet %s refused: %s", config.id_text, e)
                raise VnetFault(str(e)) from None
            undo: list[tuple[str, Callable[[], None]]] = []
            try:
                self._bring_up(config, undo, creating=True)
                self.store.save(config)
            except (EngineError, bridges.BridgeError, StoreError, VnetFault) as e:
                self._undo(config, undo)
                reason = e.message if isinstance(e, EngineError) else str(e)
                log.error("create of vnet %s failed: %s", config.id_text, reason)
                raise VnetFault(f"cannot create vnet {config.id_text}: {reason}") from None
            self.configs[config.vid] = config
            self.problems.pop(config.canonical, None)
        for w in config.warnings():
            log.warning("%s", w)
        log.info("created vnet %s (bridge %s, vnetif %s, security %s, data-path %s)",
                 config.id_text, config.bridge, config.vnetif, config.security,
                 config.data_path)
        return config

    def _bring_up(self, config: VnetConfig, undo: list, creating: bool) -> list[str]:
        """Engine vnet, bridge, vnetif enslaved and up; return the steps that changed
        something, and record how to undo them when creating."""
        if self.net.link_exists(config.bridge) and not self.net.is_bridge(config.bridge):
            raise bridges.BridgeError(config.bridge, "exists and is not a bridge")
        done = []
        if self._engine_add(config, undo if creating else None):
            done.append("engine vnet added")
        if self._ensure_bridge(config, undo, creating):
            done.append("bridge created")
        if self.net.master_of(config.vnetif) != config.bridge:
            self.net.enslave(config.bridge, config.vnetif)
            done.append("vnetif enslaved")
            undo.append(("enslave", lambda: self.net.release(config.vnetif)))
        self.net.set_up(config.vnetif)
        return done

    def _ensure_bridge(self, config: VnetConfig, undo: list, creating: bool) -> bool:
        """Create or adopt the vnet's bridge; True when it was created (and recorded,
        so that delete removes only bridges xend-vnet made)."""
        if self.net.ensure_bridge(config.bridge):
            undo.append(("bridge", lambda: self.net.delete_bridge(config.bridge)))
            self.store.record_bridge(config.vid, config.bridge)
            undo.append(("bridge record", lambda: self.store.record_bridge(config.vid, None)))
            return True
        if creating:
            # Adopted: delete leaves it in place (a stale record would not).
            self.store.record_bridge(config.vid, None)
        return False

    def _engine_add(self, config: VnetConfig, undo: list | None) -> bool:
        """``vnet.add``; False when the engine already had it with the same parameters."""
        try:
            self.engine.call(add_form(config))
        except EngineError as e:
            if e.errno != EEXIST:
                raise
            # design.md 5: "exists with the same parameters" is success.
            present = engine_vnets(self.engine.call(["vnet.list"])).get(config.canonical)
            if present is None:
                # EEXIST for something else (e.g. the vnetif belongs to another
                # vnet): the engine's own message says what.
                raise
            if present != (config.vnetif, config.security, config.data_path):
                raise VnetFault(f"the engine already has vnet {config.canonical} with vnetif "
                                f"{present[0]}, security {present[1]}, data-path "
                                f"{present[2]}") from None
            return False
        if undo is not None:
            undo.append(("engine", lambda: self.engine.call(
                ["vnet.del", ["id", config.canonical]])))
        return True

    def _undo(self, config: VnetConfig, undo: list) -> None:
        for what, step in reversed(undo):
            try:
                step()
            except (EngineError, bridges.BridgeError, StoreError) as e:
                log.error("vnet %s: undoing %s failed: %s", config.id_text, what, e)

    # -- delete ---------------------------------------------------------------

    def delete(self, id_text: object, force: bool = False) -> None:
        """Take the vnet down and forget it (design.md 4)."""
        if not isinstance(force, bool):
            raise VnetFault(f"force must be a boolean, not {type(force).__name__}")
        with self.lock:
            config = self._find(id_text)
            try:
                bridge_there = self.net.link_exists(config.bridge) and self.net.is_bridge(
                    config.bridge)
                attached = [p for p in self.net.bridge_ports(config.bridge)
                            if p != config.vnetif] if bridge_there else []
            except bridges.BridgeError as e:
                raise VnetFault(f"cannot delete vnet {config.id_text}: {e}") from None
            if attached and not force:
                log.error("delete of vnet %s refused: %s attached", config.id_text,
                          ", ".join(attached))
                raise VnetFault(
                    f"vnet {config.id_text} has domain interfaces attached to bridge "
                    f"{config.bridge}: {', '.join(attached)}; use xm vnet-delete --force "
                    "to delete it anyway")
            try:
                self.engine.call(["vnet.del", ["id", config.canonical]])
            except EngineError as e:
                if e.errno != ENOENT:
                    log.error("delete of vnet %s failed: %s", config.id_text, e.message)
                    raise VnetFault(f"cannot delete vnet {config.id_text}: {e.message}") from None
            # Only a bridge xend-vnet created goes; an adopted one stays.
            ours = bridge_there and self.store.created_bridge(config.vid) == config.bridge
            try:
                if ours:
                    self.net.delete_bridge(config.bridge)
                self.store.delete(config.vid)
            except (bridges.BridgeError, StoreError) as e:
                # The engine vnet is gone; the stored config stays, so a
                # retry (or reconcile) finds it.
                log.error("delete of vnet %s failed: %s", config.id_text, e)
                raise VnetFault(f"cannot delete vnet {config.id_text}: {e}") from None
            del self.configs[config.vid]
            self.problems.pop(config.canonical, None)
        log.info("deleted vnet %s%s%s", config.id_text, " (forced)" if force else "",
                 "" if ours or not bridge_there else
                 f"; bridge {config.bridge} kept: it existed before the vnet")

    # -- reconcile ------------------------------------------------------------

    def needs_reconcile(self) -> bool:
        """True when a stored vnet is missing from the engine, off its bridge, or was
        reported down; raises EngineError when the engine does not answer."""
        with self.lock:
            configs = list(self.configs.values())
            reported = bool(self.problems)
        if not configs:
            return False
        present = engine_vnets(self.engine.call(["vnet.list"]))
        if reported:
            return True
        for c in configs:
            if c.canonical not in present:
                return True
            if not self.net.link_exists(c.vnetif) or self.net.master_of(c.vnetif) != c.bridge:
                return True
        return False

    def reconcile(self) -> dict[str, str]:
        """Bring every stored vnet up; return {canonical id: reason} for those that stay
        down.  Never deletes anything (design.md 5)."""
        with self.lock:
            problems: dict[str, str] = {}
            for vid in sorted(self.configs):
                config = self.configs[vid]
                try:
                    done = self._bring_up(config, [], creating=False)
                except (EngineError, bridges.BridgeError, StoreError, VnetFault) as e:
                    reason = e.message if isinstance(e, EngineError) else str(e)
                    problems[config.canonical] = reason
                    if isinstance(e, EngineUnavailable):
                        # Domains started before the engine still find their
                        # bridge; the engine's interface joins it later.
                        try:
                            self._ensure_bridge(config, [], creating=False)
                        except (bridges.BridgeError, StoreError) as be:
                            reason = f"{reason}; bridge: {be}"
                            problems[config.canonical] = reason
                    if self.problems.get(config.canonical) != reason:
                        log.error("restore of vnet %s failed: %s", config.id_text, reason)
                    continue
                if done or not self.reconciled:
                    log.info("restored vnet %s (bridge %s, vnetif %s)%s", config.id_text,
                             config.bridge, config.vnetif, f": {', '.join(done)}" if done else "")
            self.problems = problems
            self.reconciled = True
            return dict(problems)

    def status(self) -> dict:
        """What ``xend-vnet status`` shows."""
        with self.lock:
            return {
                "vnets": self.ids(),
                "problems": [f"vnet {self.configs[v].id_text}: {self.problems[v.canonical]}"
                             for v in sorted(self.configs) if v.canonical in self.problems],
                "store_problems": list(self.store_problems),
            }




class ReconcileLoop(threading.Thread):
    """Polls the engine every ``interval`` seconds and reconciles when a stored
    vnet is missing or off its bridge, e.g. after vnetd restarted (design.md 5)."""

    def __init__(self, service: VnetService, interval: float = 2.0):
        super().__init__(name="reconcile", daemon=True)
        self.service = service
        self.interval = interval
        self.stopping = threading.Event()
        self.engine_down: str | None = None
        self.last_failure: str | None = None

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                self.poll()
            except Exception as e:  # noqa: BLE001 - design.md 5: keep reconciling, whatever failed
                failure = f"{type(e).__name__}: {e}"
                if failure != self.last_failure:
                    log.exception("reconcile failed; trying again every %g s", self.interval)
                self.last_failure = failure
            else:
                self.last_failure = None

    def poll(self) -> None:
        """One round: check, reconcile if needed; engine outages are logged once."""
        try:
            if self.service.needs_reconcile():
                self.service.reconcile()
        except EngineError as e:
            if self.engine_down != e.message:
                log.warning("engine: %s; stored vnets are restored when it answers again",
                            e.message)
                self.engine_down = e.message
            return
        except bridges.BridgeError as e:
            log.error("reconcile: %s", e)
            return
        if self.engine_down is not None:
            log.info("engine answers again")
            self.engine_down = None

    def stop(self) -> None:
        self.stopping.set()
