"""What a crash or an engine outage leaves in the engine, removed by the
reconcile (design.md 5): owned vnets the store lacks, and the removals a
delete owes the engine when vnetd was down.

The service runs over a fake engine (tests/fake_engine.py: the engine's real
command layer, which keeps the owner mark) and an in-memory network
(tests/fake_net.py), so nothing needs root.
"""

from __future__ import annotations

import logging
import os
import threading

import pytest
from fake_engine import FakeEngine
from vnet_server_harness import Harness

from xend_vnet import sxp
from xend_vnet.config import VnetConfig
from xend_vnet.engine_client import EngineClient
from xend_vnet.store import PendingRemoval, VnetStore
from xend_vnet.vnet_id import VnetId
from xend_vnet.xmlrpc.engine_forms import add_form
from xend_vnet.xmlrpc.reconcile import ReconcileLoop
from xend_vnet.xmlrpc.service import VnetFault, VnetService

VNET97 = "(vnet (id 97) (bridge vnet97) (vnetif vnif97) (security none))"
C97 = "0000:0000:0000:0000:0000:0000:0000:0097"
C98 = "0000:0000:0000:0000:0000:0000:0000:0098"
V97 = VnetId.parse("97")
OWNER = ["owner", "xend-vnet"]


def owned(h) -> set[str]:
    """The vnets the engine marks as xend-vnet's (its owner records)."""
    return {vid.canonical for vid in h.engine.host.owners}


@pytest.fixture
def h():
    harness = Harness()
    yield harness
    harness.close()


def engine_back(h, keep_vnets: bool) -> FakeEngine:
    """vnetd answering again: restarted (its vnets lost, its devices kept) or
    only stalled (``keep_vnets``: everything as it was)."""
    engine = FakeEngine(h.engine.path, on_add=h.net.add_link, on_del=h.net.remove_link)
    if keep_vnets:
        engine.host = h.engine.host
    h.engine = engine.start()
    return engine


def create(service: VnetService, text: str) -> VnetConfig:
    return service.create(sxp.parse_one(text))


def restarted_service(h) -> VnetService:
    """A new server process over the same store, network and engine socket."""
    service = VnetService(h.store, EngineClient(h.engine.path, timeout=5), net=h.net)
    service.load()
    return service


def delete_while_engine_down(h, config: str = VNET97, vid: str = "97") -> str | None:
    create(h.service, config)
    h.engine.close()
    return h.service.delete(vid)


# -- the owner mark --------------------------------------------------------------

def test_owner_sent_on_every_add_and_del(h):
    create(h.service, VNET97)
    h.engine.restart()
    h.service.reconcile()
    add = ["vnet.add", ["id", C97], ["vnetif", "vnif97"], ["security", "none"], OWNER]
    assert h.engine.sent("vnet.add") == [add, add]       # create, then the re-add
    h.net.fail["set_up"] = "Operation not permitted"
    with pytest.raises(VnetFault):
        create(h.service, "(vnet (id 98))")               # undone: a vnet.del
    h.service.delete("97")
    assert h.engine.sent("vnet.del") == [["vnet.del", ["id", C98], OWNER],
                                         ["vnet.del", ["id", C97], OWNER]]


# -- half-made vnets --------------------------------------------------------------

def test_reconcile_removes_an_owned_vnet_the_store_lacks(h, caplog):
    # A server killed in a create: the engine vnet and its TAP, a bridge
    # recorded, nothing stored.
    EngineClient(h.engine.path).call(add_form(VnetConfig.from_text(VNET97)))
    h.net.ensure_bridge("vnet97")
    h.net.enslave("vnet97", "vnif97")
    h.store.record_bridge(V97, "vnet97")
    assert owned(h) == {C97}
    loop = ReconcileLoop(h.service)
    with caplog.at_level(logging.INFO, logger="xend-vnet"):
        loop.poll()
        loop.poll()
    assert h.engine.vnets == {}
    assert h.engine.sent("vnet.del") == [["vnet.del", ["id", C97], OWNER]]
    assert "vnif97" not in h.net.links and "vnet97" not in h.net.links
    assert h.store.created_bridge(V97) is None
    removed = [r.getMessage() for r in caplog.records if "not stored" in r.getMessage()]
    assert removed == [f"vnet {C97} removed from vnetd: it was marked as xend-vnet's but is "
                       "not stored, so a create did not finish (its device went with it)"]
    assert not h.service.needs_reconcile()


def test_reconcile_leaves_unowned_and_stored_vnets_alone(h):
    h.engine.execute("(vnet.add (id 98))")               # vn vnet-create's: no mark
    create(h.service, VNET97)
    h.service.reconcile()
    assert not h.service.needs_reconcile()
    assert set(h.engine.vnets) == {C97, C98} and h.engine.sent("vnet.del") == []


def test_an_owned_vnet_whose_stored_file_did_not_load_is_left_alone(h):
    EngineClient(h.engine.path).call(add_form(VnetConfig.from_text("(vnet (id 98))")))
    h.store.save(VnetConfig.from_text("(vnet (id 97) (bridge shared))"))
    h.store.save(VnetConfig.from_text("(vnet (id 98) (bridge shared))"))   # collides
    h.service.load()
    h.service.reconcile()
    assert C98 in h.engine.vnets and h.engine.sent("vnet.del") == []



def test_an_owned_vnet_whose_stored_file_was_moved_aside_is_left_alone(h):
    # An unreadable stored file (a read error at boot, a config of a newer
    # version) goes to .corrupt: its vnet is still the operator's, and the
    # domains on it keep their network.
    EngineClient(h.engine.path).call(add_form(VnetConfig.from_text("(vnet (id 97))")))
    h.store.save(VnetConfig.from_text("(vnet (id 97))"))
    with open(h.store.path_of(V97), "ab") as f:
        f.write(b"\xff")
    h.service.load()
    assert os.path.exists(h.store.path_of(V97) + ".corrupt")
    h.service.reconcile()
    assert C97 in h.engine.vnets and h.engine.sent("vnet.del") == []


class HeldNet:
    """The fake network with ``enslave`` held until released: a create stopped
    half-way, its engine vnet made and marked, nothing stored yet."""

    def __init__(self, net):
        self.net = net
        self.entered = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name):
        return getattr(self.net, name)

    def enslave(self, bridge, ifname):
        self.entered.set()
        assert self.release.wait(10)
        self.net.enslave(bridge, ifname)


def test_a_create_in_progress_is_not_taken_for_a_half_made_vnet(h):
    held = HeldNet(h.net)
    service = VnetService(h.store, EngineClient(h.engine.path, timeout=5), net=held)
    service.load()
    creating = threading.Thread(target=create, args=(service, VNET97))
    creating.start()
    assert held.entered.wait(10) and owned(h) == {C97}
    reconcile = threading.Thread(target=ReconcileLoop(service).poll)
    reconcile.start()
    reconcile.join(0.3)
    assert reconcile.is_alive()                          # waits for the create
    held.release.set()
    creating.join(10)
    reconcile.join(10)
    assert h.engine.sent("vnet.del") == [] and service.ids() == ["97"]
    assert h.engine.vnets == {C97: ("vnif97", "none")}


# -- delete while vnetd is down ----------------------------------------------------

def test_delete_with_the_engine_down_succeeds_and_the_tap_goes_at_the_next_reconcile(h):
    later = delete_while_engine_down(h)
    assert later.startswith("vnetd is not running (control socket ")
    assert later.endswith("; xend-vnet removes its TAP vnif97 when it next finds vnetd "
                          "answering")
    assert h.service.ids() == [] and h.store.load_all() == ([], [])
    assert "vnet97" not in h.net.links                   # the bridge it made
    assert h.net.links["vnif97"]["kind"] == "tap"        # persistent (design.md 5)
    assert os.path.exists(h.store.removal_record_of(V97))
    assert h.service.status()["pending_removals"] == [f"vnet {C97}: TAP vnif97"]
    loop = ReconcileLoop(h.service)
    loop.poll()                                          # still down: kept
    assert "vnif97" in h.net.links and h.service.cleanup.pending
    engine_back(h, keep_vnets=False)
    loop.poll()
    assert "vnif97" not in h.net.links
    assert not os.path.exists(h.store.removal_record_of(V97))
    assert h.engine.sent("vnet.del") == [] and h.service.status()["pending_removals"] == []
    assert not h.service.needs_reconcile()


def test_pending_removal_deletes_the_vnet_a_stalled_engine_still_has(h):
    delete_while_engine_down(h)
    engine_back(h, keep_vnets=True)
    h.service.reconcile()
    assert h.engine.vnets == {} and "vnif97" not in h.net.links
    assert h.engine.sent("vnet.del") == [["vnet.del", ["id", C97], OWNER]]
    assert h.service.cleanup.pending == {}


def test_pending_removal_of_a_vxlan_vnet_deletes_its_device_by_alias(h):
    delete_while_engine_down(h, "(vnet (id 9c) (data-path vxlan))", "9c")
    assert h.service.status()["pending_removals"] == [
        "vnet 0000:0000:0000:0000:0000:0000:0000:009c: VXLAN device vnif009c"]
    engine_back(h, keep_vnets=False)
    h.service.reconcile()
    assert h.net.vxlan_deleted == [("vnif009c", VnetId.parse("9c"))]
    assert "vnif009c" not in h.net.links


def test_pending_removal_leaves_a_device_of_another_kind(h, caplog):
    delete_while_engine_down(h)
    h.net.remove_link("vnif97")
    h.net.add_link("vnif97", "veth")                     # someone else's now
    engine_back(h, keep_vnets=False)
    with caplog.at_level(logging.WARNING, logger="xend-vnet"):
        h.service.reconcile()
    assert h.net.links["vnif97"]["kind"] == "veth"
    assert f"vnet {C97}: vnif97: is a veth, not a TAP; left in place" in caplog.messages
    assert h.service.cleanup.pending == {}


def test_pending_removal_that_fails_is_kept_and_logged_once(h, caplog):
    delete_while_engine_down(h)
    engine_back(h, keep_vnets=False)
    with caplog.at_level(logging.ERROR, logger="xend-vnet"):
        for _ in range(2):
            h.net.fail["delete_tap"] = "Operation not permitted"
            h.service.reconcile()
    assert [m for m in caplog.messages if "Operation not permitted" in m] == [
        f"vnet {C97}: cannot finish its removal: vnif97: Operation not permitted; "
        "trying again"]
    assert "vnif97" in h.net.links and h.service.needs_reconcile()
    h.service.reconcile()
    assert "vnif97" not in h.net.links and not h.service.needs_reconcile()


def test_pending_removal_survives_a_server_restart(h):
    delete_while_engine_down(h)
    engine_back(h, keep_vnets=False)
    service = restarted_service(h)
    assert list(service.cleanup.pending) == [V97]
    service.reconcile()
    assert "vnif97" not in h.net.links and service.cleanup.pending == {}
    assert restarted_service(h).cleanup.pending == {}


def test_a_new_create_cancels_the_pending_removal(h):
    delete_while_engine_down(h)
    service = restarted_service(h)
    with pytest.raises(VnetFault):
        create(service, VNET97)                           # vnetd still down
    assert list(service.cleanup.pending) == [V97]
    engine_back(h, keep_vnets=False)
    create(service, VNET97)
    assert service.cleanup.pending == {}
    assert not os.path.exists(h.store.removal_record_of(V97))
    service.reconcile()
    assert h.engine.vnets == {C97: ("vnif97", "none")}
    assert h.net.links["vnif97"]["master"] == "vnet97"   # the TAP kept, in use again


def test_a_new_create_on_another_vnetif_removes_the_old_device_first(h):
    delete_while_engine_down(h)
    engine_back(h, keep_vnets=True)                      # still has 97 on vnif97
    create(h.service, "(vnet (id 97) (vnetif vnif97b))")
    assert "vnif97" not in h.net.links and h.net.links["vnif97b"]["master"] == "vnet97"
    assert h.engine.vnets == {C97: ("vnif97b", "none")}
    assert h.service.cleanup.pending == {}


def test_a_removal_that_could_not_finish_is_kept_when_a_create_takes_another_vnetif(h):
    delete_while_engine_down(h)
    engine_back(h, keep_vnets=False)                     # restarted: vnif97 left behind
    h.service.cleanup.finish_now = lambda vid: None      # its removal did not get through
    create(h.service, "(vnet (id 97) (vnetif vnif97b))")
    assert V97 in h.service.cleanup.pending              # the old device still owed
    assert os.path.exists(h.store.removal_record_of(V97))
    h.service.reconcile()                                # the next poll finishes it
    assert "vnif97" not in h.net.links and h.service.cleanup.pending == {}


def test_stored_config_beside_a_removal_record_wins(h):
    # A delete that crashed between its record and the config's removal (it
    # never answered): the vnet stays, the record goes.
    create(h.service, VNET97)
    h.store.record_removal(PendingRemoval(V97, "vnif97", "vnetd"))
    service = restarted_service(h)
    service.reconcile()
    assert service.ids() == ["97"] and C97 in h.engine.vnets and "vnif97" in h.net.links
    assert not os.path.exists(h.store.removal_record_of(V97))


def test_corrupt_removal_records_are_reported_and_moved_aside(h):
    os.makedirs(h.store.dir, exist_ok=True)
    path = h.store.removal_record_of(V97)
    with open(path, "w") as f:
        f.write("(vnet.deleted (id 97) (vnetif 'bad name') (data-path vnetd))\n")
    service = VnetService(h.store, EngineClient(h.engine.path), net=h.net)
    problems = service.load()
    assert problems == [f"{path}: interface name 'bad name' contains ' '; use letters, "
                        f"digits, '.', '_' and '-'; moved aside to {path}.corrupt"]
    assert service.status()["store_problems"] == problems
    assert service.cleanup.pending == {} and os.path.exists(path + ".corrupt")
    service.reconcile()


def test_delete_refused_by_a_live_engine_is_still_a_fault(h):
    create(h.service, VNET97)
    h.engine.replies["vnet.del"] = '(err (errno 16) (message "vnet.del: device busy"))'
    with pytest.raises(VnetFault, match="cannot delete vnet 97: vnet.del: device busy"):
        h.service.delete("97")
    assert h.service.ids() == ["97"] and h.service.cleanup.pending == {}
    assert not os.path.exists(h.store.removal_record_of(V97))


def test_a_store_that_cannot_take_the_record_keeps_the_vnet(h, monkeypatch):
    create(h.service, VNET97)
    h.engine.close()

    def full(removal):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(VnetStore, "_write", lambda self, final, text: full(None))
    with pytest.raises(VnetFault, match="cannot delete vnet 97: .*No space left on device"):
        h.service.delete("97")
    assert h.service.ids() == ["97"] and h.store.exists(V97) and "vnet97" in h.net.links
