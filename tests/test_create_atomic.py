"""Create is atomic on any failure, and never accepts what the store cannot
read back (design.md 4): OSError and raw netlink errors injected at each
step, and a config whose stored form is over the store's limit."""

from __future__ import annotations

import errno
import os

import pytest
from pyroute2.netlink.exceptions import NetlinkError
from vnet_server_harness import Harness
import xmlrpc.client

from xend_vnet.store import MAX_FILE, VnetStore
from xend_vnet.xmlrpc.service import VnetService

VNET97 = "(vnet (id 97) (bridge vnet97) (vnetif vnif97) (security none))"

NET_STEPS = ["link_exists", "ensure_bridge", "master_of", "enslave", "set_up"]
STORE_STEPS = ["record_bridge", "save"]
FAILURES = {
    "emfile": lambda: OSError(errno.EMFILE, os.strerror(errno.EMFILE)),
    "netlink": lambda: NetlinkError(errno.EBUSY, "Device or resource busy"),
}


@pytest.fixture
def h():
    harness = Harness()
    yield harness
    harness.close()


def _fail_once(obj, name: str, exc: Exception, monkeypatch) -> None:
    real = getattr(obj, name)
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(obj, name, failing)


def _nothing_left(h) -> None:
    assert h.engine.vnets == {}
    assert "vnet97" not in h.net.links
    assert "vnif97" not in h.net.links
    assert h.store.load_all() == ([], [])
    assert os.listdir(h.store.dir) == [] if os.path.isdir(h.store.dir) else True
    assert h.rpc.xend_vnets() == []


def _create_fails(h) -> xmlrpc.client.Fault:
    with pytest.raises(xmlrpc.client.Fault) as e:
        h.rpc.xend_vnet_create(VNET97)
    return e.value


@pytest.mark.parametrize("kind", sorted(FAILURES))
@pytest.mark.parametrize("step", NET_STEPS)
def test_network_step_failure_undoes_everything(h, monkeypatch, step, kind):
    _fail_once(h.net, step, FAILURES[kind](), monkeypatch)
    f = _create_fails(h)
    assert f.faultCode == 2 and f.faultString.startswith("cannot create vnet 97: ")
    assert ("EMFILE" if kind == "emfile" else "Device or resource busy") in f.faultString
    _nothing_left(h)
    h.rpc.xend_vnet_create(VNET97)          # and a retry works
    assert h.rpc.xend_vnets() == ["97"]


@pytest.mark.parametrize("kind", sorted(FAILURES))
@pytest.mark.parametrize("step", STORE_STEPS)
def test_store_step_failure_undoes_everything(h, monkeypatch, step, kind):
    _fail_once(h.store, step, FAILURES[kind](), monkeypatch)
    f = _create_fails(h)
    assert f.faultCode == 2 and "cannot create vnet 97" in f.faultString
    _nothing_left(h)


@pytest.mark.parametrize("kind", sorted(FAILURES))
def test_engine_step_failure_undoes_everything(h, monkeypatch, kind):
    _fail_once(h.service.engine, "call", FAILURES[kind](), monkeypatch)
    f = _create_fails(h)
    assert f.faultCode == 2 and "cannot create vnet 97" in f.faultString
    _nothing_left(h)


def test_failing_undo_step_does_not_stop_the_others(h, monkeypatch):
    _fail_once(h.net, "set_up", OSError(errno.EMFILE, "Too many open files"), monkeypatch)
    _fail_once(h.net, "release", NetlinkError(errno.ENODEV, "No such device"), monkeypatch)
    _create_fails(h)
    assert h.engine.vnets == {} and "vnet97" not in h.net.links
    assert h.store.load_all() == ([], [])


def test_value_stored_over_the_limit_is_refused_at_create(h):
    # 300 KB of DEL: accepted by XML-RPC, but stored as 4-character escapes.
    config = "(vnet (id 97) (bridge vnet97) (note '" + "\x7f" * 300_000 + "'))"
    with pytest.raises(xmlrpc.client.Fault) as e:
        h.rpc.xend_vnet_create(config)
    f = e.value
    assert f.faultCode == 2
    assert f"limit of {MAX_FILE} bytes" in f.faultString
    assert "1200" in f.faultString.replace(",", "")     # the size it would take
    _nothing_left(h)
    # The next start finds nothing lost and nothing moved aside.
    again = VnetService(VnetStore(h.store.state_dir), h.service.engine, net=h.net)
    assert again.load() == [] and again.ids() == []


def test_value_just_under_the_limit_is_stored_and_read_back(h):
    config = "(vnet (id 97) (bridge vnet97) (note '" + "\x7f" * 250_000 + "'))"
    h.rpc.xend_vnet_create(config)
    again = VnetService(VnetStore(h.store.state_dir), h.service.engine, net=h.net)
    assert again.load() == [] and again.ids() == ["97"]
