"""The restore's netlink session and the reconcile loop (design.md 5).

``LinkSession`` keeps one batch of links (``bridges.batch``: one netlink
socket, one dump) across the batches of a restore, so a restart with many
stored vnets reads the host's links once, not once per vnet.
``ReconcileLoop`` polls the engine and reconciles when a stored vnet is
missing or off its bridge.
"""

from __future__ import annotations

import logging
import threading

from .. import bridges
from ..engine_client import EngineError

log = logging.getLogger("xend-vnet")


class LinkSession:
    """The restore's one batch of links (bridges.batch), opened when first needed
    and closed when stale or done."""

    def __init__(self, net):
        self.net = net
        self.current = None
        self.context = None

    def open(self):
        if self.current is None:
            self.context = self.net.batch()
            self.current = self.context.__enter__()
        return self.current

    def close(self) -> None:
        if self.context is not None:
            context, self.context, self.current = self.context, None, None
            context.__exit__(None, None, None)


class ReconcileLoop(threading.Thread):
    """Polls the engine every ``interval`` seconds and reconciles when a stored
    vnet is missing or off its bridge, e.g. after vnetd restarted (design.md 5)."""

    def __init__(self, service, interval: float = 2.0):
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
