"""The XML-RPC server: methods, Faults, create/delete semantics, hardening.

Runs the real HTTP server on a unix socket (and TCP on 127.0.0.1) against a
fake engine (tests/fake_engine.py: the real control server and commands
without the kernel) and an in-memory network (tests/fake_net.py),
so it needs no root.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
import xmlrpc.client
import xmlrpc.server
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from fake_engine import FakeEngine
from fake_net import FakeNet
from netns import wait_for
from vnet_server_harness import Harness, UnixConn, legacy_proxy

from xend_vnet import sxp
from xend_vnet.config import VnetConfig
from xend_vnet.engine_client import EngineClient
from xend_vnet.kernel_shim.control.commands import CommandError
from xend_vnet.store import StoreError, VnetStore
from xend_vnet.vnet_id import VnetId
from xend_vnet.xmlrpc import server as server_mod
from xend_vnet.xmlrpc.api import VnetAPI, check_sxpr, parse_request
from xend_vnet.xmlrpc.caller import Caller, CallerFileError, read_caller_file
from xend_vnet.xmlrpc.server import DeadlineReader, ServerError, XMLRPCServers
from xend_vnet.xmlrpc.reconcile import ReconcileLoop
from xend_vnet.xmlrpc.service import VnetFault, VnetService, engine_vnets

VNET97 = "(vnet (id 97) (bridge vnet97) (vnetif vnif97) (security none))"
C97 = "0000:0000:0000:0000:0000:0000:0000:0097"
C98 = "0000:0000:0000:0000:0000:0000:0000:0098"
OWNER = ["owner", "xend-vnet"]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.fixture
def h():
    harness = Harness(tcp=True)
    yield harness
    harness.close()


def fault(call, *args) -> xmlrpc.client.Fault:
    with pytest.raises(xmlrpc.client.Fault) as info:
        call(*args)
    return info.value


def post(body: bytes, version="HTTP/1.1", path="/RPC2", extra=b"") -> bytes:
    return (f"POST {path} {version}\r\nHost: /x\r\nContent-Type: text/xml\r\n"
            f"Content-Length: {len(body)}\r\n").encode() + extra + b"\r\n" + body


CALL_VNETS = xmlrpc.client.dumps((), "xend_vnets").encode()


# -- methods ------------------------------------------------------------------

def test_create_list_get_delete(h):
    assert h.rpc.xend_vnets() == []
    assert h.rpc.xend_vnet_create(VNET97) is None
    assert h.rpc.xend_vnets() == ["97"]
    assert h.rpc.xend_vnet("97") == ["vnet", ["id", "97"], ["bridge", "vnet97"],
                                     ["vnetif", "vnif97"], ["security", "none"]]
    assert h.rpc.xend_vnet("0097") == h.rpc.xend_vnet("0:0:0:0:0:0:0:97")
    assert h.engine.vnets == {C97: ("vnif97", "none")}
    assert h.engine.sent("vnet.add") == [
        ["vnet.add", ["id", C97], ["vnetif", "vnif97"], ["security", "none"], OWNER]]
    assert h.net.links["vnet97"] == {"kind": "bridge", "master": None, "up": True}
    assert h.net.links["vnif97"] == {"kind": "tap", "master": "vnet97", "up": True}
    assert os.path.exists(h.store.path_of(h.service.configs[next(iter(h.service.configs))].vid))
    assert h.rpc.xend_vnet_delete("0097") is None
    assert h.rpc.xend_vnets() == []
    assert h.engine.vnets == {}
    assert ["vnet.del", ["id", C97], OWNER] in h.engine.requests
    assert "vnet97" not in h.net.links
    assert h.store.load_all() == ([], [])


def test_ids_sorted_and_kept_as_written(h):
    for text in ("(vnet (id 1:0:0:0:0:0:0:5))", "(vnet (id 00a0))", "(vnet (id 3))"):
        h.rpc.xend_vnet_create(text)
    assert h.rpc.xend_vnets() == ["3", "00a0", "1:0:0:0:0:0:0:5"]
    assert h.rpc.vnet_list() == [["vnet", ["id", "3"]], ["vnet", ["id", "00a0"]],
                                 ["vnet", ["id", "1:0:0:0:0:0:0:5"]]]


def test_duplicate_create_and_unknown_delete_are_fault_2(h):
    h.rpc.xend_vnet_create(VNET97)
    requests = len(h.engine.requests)
    f = fault(h.rpc.xend_vnet_create, "(vnet (id 0097) (bridge other))")
    assert (f.faultCode, f.faultString) == (2, "vnet 0097 already exists")
    assert len(h.engine.requests) == requests and "other" not in h.net.links
    f = fault(h.rpc.xend_vnet_delete, "98")
    assert (f.faultCode, f.faultString) == (2, "No such vnet 98")
    f = fault(h.rpc.xend_vnet, "98")
    assert (f.faultCode, f.faultString) == (2, "No such vnet 98")
    assert fault(h.rpc.xend_vnet, "not-an-id").faultString == "No such vnet not-an-id"


def test_validation_errors_are_fault_2(h):
    f = fault(h.rpc.xend_vnet_create, "(vnet (id 97) (security conf))")
    assert f.faultCode == 2 and "key-file" in f.faultString and "vn key-gen" in f.faultString
    f = fault(h.rpc.xend_vnet_create, "(vnet (id 97)")
    assert f.faultCode == 2 and "cannot parse the config text" in f.faultString
    h.rpc.xend_vnet_create(VNET97)
    f = fault(h.rpc.xend_vnet_create, "(vnet (id 98) (bridge vnet97))")
    assert f.faultCode == 2 and "vnet 98" in f.faultString and "vnet 97" in f.faultString


def test_create_from_relative_path_in_callers_cwd(h, tmp_path, monkeypatch):
    (tmp_path / "vnet97.sxp").write_text("# vnet 97\n" + VNET97 + "\n")
    monkeypatch.chdir(tmp_path)
    h.rpc.xend_vnet_create("vnet97.sxp")
    assert h.rpc.xend_vnets() == ["97"]
    f = fault(h.rpc.xend_vnet_create, "missing.sxp")
    assert (f.faultCode, f.faultString) == (2, "File not found: missing.sxp")
    (tmp_path / "bad.sxp").write_text("(vnet (id 98)")
    f = fault(h.rpc.xend_vnet_create, "bad.sxp")
    assert "cannot parse bad.sxp" in f.faultString


def test_create_from_absolute_path_and_nested_arrays(h, tmp_path):
    (tmp_path / "v.sxp").write_text("(vnet (id 98))")
    h.rpc.xend_vnet_create(str(tmp_path / "v.sxp"))
    h.rpc.vnet_create(["vnet", ["id", "99"], ["comment", "from a list"]])
    assert h.rpc.xend_vnets() == ["98", "99"]
    assert h.rpc.xend_vnet("99") == ["vnet", ["id", "99"], ["comment", "from a list"]]


def test_tcp_accepts_text_but_never_paths(h, tmp_path):
    (tmp_path / "v.sxp").write_text(VNET97)
    tcp = h.tcp_rpc()
    f = fault(tcp.xend_vnet_create, str(tmp_path / "v.sxp"))
    assert f.faultCode == 2 and "over TCP only config text" in f.faultString
    tcp.xend_vnet_create(VNET97)
    assert tcp.xend_vnets() == ["97"]


VIFS_ATTACHED = (
    "vnet 97 has domain interfaces attached to bridge vnet97: vif1.0, vif2.1; detach them "
    "first (xm network-detach DOMAIN DEVID, or shut their domains down), or delete it anyway "
    "with xend-vnet delete --force 97 on this host (or xend-vnet's xm vnet-delete --force 97)")


def test_delete_with_vifs_attached_names_them_and_the_ways_through(h):
    h.rpc.xend_vnet_create(VNET97)
    for vif in ("vif1.0", "vif2.1"):
        h.net.add_link(vif, "vif")
        h.net.enslave("vnet97", vif)
    f = fault(h.rpc.xend_vnet_delete, "97")
    assert (f.faultCode, f.faultString) == (2, VIFS_ATTACHED)
    assert h.rpc.xend_vnets() == ["97"] and "vnet97" in h.net.links
    h.rpc.vnet_delete("97", True)
    assert h.rpc.xend_vnets() == [] and "vnet97" not in h.net.links
    assert h.net.links["vif1.0"]["master"] is None and h.net.links["vif2.1"]["master"] is None


def test_wrong_argument_types_and_counts(h):
    f = fault(h.rpc.xend_vnet, 97)
    assert f.faultCode == 2 and "must be a string" in f.faultString
    f = fault(h.rpc.xend_vnet_create, 5)
    assert f.faultCode == 2 and "not int" in f.faultString
    f = fault(h.rpc.xend_vnet_create, ["vnet", ["id", 97]])
    assert f.faultCode == 2 and "strings" in f.faultString
    f = fault(h.rpc.xend_vnet_create, {"id": "97"})
    assert f.faultCode == 2
    f = fault(h.rpc.xend_vnet_delete, "97", "yes")
    assert f.faultCode == 2 and "boolean" in f.faultString
    f = fault(h.rpc.xend_vnet)
    assert f.faultCode == 2 and "wrong number of arguments" in f.faultString
    f = fault(h.rpc.xend_vnets, "extra")
    assert f.faultCode == 2
    deep = ["vnet", ["id", "97"]]
    cur = deep
    for _ in range(100):
        cur.append(["x"])
        cur = cur[-1]
    f = fault(h.rpc.vnet_create, deep)
    assert f.faultCode == 2 and "nested deeper" in f.faultString
    f = fault(h.rpc.vnet_create, "(vnet (id 97) (x '\\x01'))")
    assert f.faultCode == 2 and "x: value" in f.faultString and "control character" in f.faultString
    assert h.rpc.xend_vnets() == []


def test_unknown_method_is_fault_1_and_no_dotted_names(h):
    f = fault(h.rpc.xend_domains)
    assert (f.faultCode, f.faultString) == (1, 'method "xend_domains" is not supported')
    f = fault(getattr(h.rpc, "service.store.save"))
    assert f.faultCode == 1
    assert {"xend_vnets", "xend_vnet", "xend_vnet_create", "xend_vnet_delete", "vnet_create",
            "vnet_delete", "vnet_list", "system.listMethods"} <= set(
        h.rpc.system.listMethods())
    assert "stored ids" in h.rpc.system.methodHelp("xend_vnets")


def test_fault_code_3_never_used(h):
    codes = set()
    for call, args in ((h.rpc.xend_vnet, ("x",)), (h.rpc.xend_vnet_delete, ("x",)),
                       (h.rpc.xend_vnet_create, ("(vnet)",)), (h.rpc.nope, ())):
        codes.add(fault(call, *args).faultCode)
    assert 3 not in codes


# -- create is atomic -----------------------------------------------------------

def _nothing_left(h):
    assert h.engine.vnets == {}
    assert "vnet97" not in h.net.links
    assert h.store.load_all() == ([], [])
    assert h.rpc.xend_vnets() == []


def test_failed_enslave_undoes_engine_and_bridge(h):
    h.net.fail["enslave"] = "Operation not permitted"
    f = fault(h.rpc.xend_vnet_create, VNET97)
    assert f.faultCode == 2 and "cannot create vnet 97" in f.faultString
    assert "Operation not permitted" in f.faultString
    _nothing_left(h)
    assert ["vnet.del", ["id", C97], OWNER] in h.engine.requests


def test_failed_store_undoes_everything(h, monkeypatch):
    def broken(config):
        raise StoreError(28, "cannot store vnet 97: No space left on device")

    monkeypatch.setattr(h.store, "save", broken)
    f = fault(h.rpc.xend_vnet_create, VNET97)
    assert "No space left" in f.faultString
    _nothing_left(h)


def test_engine_refusal_is_reported(h):
    # The daemon's answer when the TAP cannot be made (control/host.py).
    h.engine.host.fail_create = CommandError(1, "cannot create TAP vnif97: "
                                             "Operation not permitted")
    f = fault(h.rpc.xend_vnet_create, VNET97)
    assert f.faultCode == 2 and "cannot create TAP vnif97: Operation not permitted" \
        in f.faultString
    _nothing_left(h)


def test_engine_down_is_reported(h):
    h.engine.close()
    f = fault(h.rpc.xend_vnet_create, VNET97)
    assert f.faultCode == 2 and "vnetd is not running" in f.faultString


def test_existing_bridge_adopted_and_non_bridge_refused(h):
    h.net.add_link("vnet97", "bridge")
    h.rpc.xend_vnet_create(VNET97)
    assert h.net.links["vnif97"]["master"] == "vnet97"
    h.net.add_link("vnet98", "veth")
    f = fault(h.rpc.xend_vnet_create, "(vnet (id 98))")
    assert "vnet98" in f.faultString and "not a bridge" in f.faultString
    assert C97 in h.engine.vnets and len(h.engine.vnets) == 1


def test_engine_exists_with_same_parameters_is_success(h):
    h.engine.execute(f"(vnet.add (id {C97}) (vnetif vnif97))")
    h.rpc.xend_vnet_create(VNET97)
    assert h.rpc.xend_vnets() == ["97"]
    h.rpc.xend_vnet_delete("97")
    h.engine.execute(f"(vnet.add (id {C97}))")
    f = fault(h.rpc.xend_vnet_create, VNET97)
    assert "already has vnet" in f.faultString and "vnif0097" in f.faultString
    assert h.engine.vnets == {C97: ("vnif0097", "none")}   # not ours to delete


def test_vxlan_config_passed_to_the_engine_and_kept_verbatim(h):
    config = "(vnet (id 9c) (data-path vxlan) (bridge vnet9c))"
    h.rpc.xend_vnet_create(config)
    c9c = "0000:0000:0000:0000:0000:0000:0000:009c"
    assert h.engine.sent("vnet.add") == [["vnet.add", ["id", c9c], ["vnetif", "vnif009c"],
                                          ["security", "none"], ["data-path", "vxlan"],
                                          OWNER]]
    assert h.rpc.xend_vnet("9c") == ["vnet", ["id", "9c"], ["data-path", "vxlan"],
                                     ["bridge", "vnet9c"]]
    assert h.net.links["vnif009c"]["master"] == "vnet9c"
    # A vnetd vnet's vnet.add has no data-path (an older engine takes it; it
    # ignores the owner too, protocol.md 8.2).
    h.rpc.xend_vnet_create(VNET97)
    assert h.engine.sent("vnet.add")[-1] == [
        "vnet.add", ["id", C97], ["vnetif", "vnif97"], ["security", "none"], OWNER]
    f = fault(h.rpc.xend_vnet_create, "(vnet (id 9d) (security conf) (key-file /k) "
                                      "(data-path vxlan))")
    assert f.faultCode == 2 and "data-path" in f.faultString
    assert "neither authenticates nor encrypts" in f.faultString
    assert h.rpc.xend_vnets() == ["97", "9c"]


def test_engine_vnet_on_the_other_data_path_is_not_the_same(h):
    h.engine.execute(f"(vnet.add (id {C97}) (vnetif vnif97) (data-path vxlan))")
    f = fault(h.rpc.xend_vnet_create, VNET97)
    assert "already has vnet" in f.faultString and "data-path vxlan" in f.faultString
    assert h.engine.vnets == {C97: ("vnif97", "none")}   # not ours to delete


def test_engine_vnets_reads_the_data_path():
    forms = sxp.parse_all(f"(vnet (id {C97}) (vnetif vnif97) (security none) (header 64))\n"
                          "(vnet (id 9c) (vnetif vnif009c) (security none) (data-path vxlan))")
    assert engine_vnets(forms) == {
        C97: ("vnif97", "none", "vnetd"),      # an engine that does not say: its own path
        "0000:0000:0000:0000:0000:0000:0000:009c": ("vnif009c", "none", "vxlan")}


def test_engine_eexist_for_another_reason_gives_the_engines_message(h):
    h.engine.execute("(vnet.add (id 98) (vnetif vnif97))")
    f = fault(h.rpc.xend_vnet_create, VNET97)
    assert f.faultCode == 2
    assert f.faultString == (f"cannot create vnet 97: vnet.add: interface vnif97 of vnet {C97} "
                             f"is already used by vnet {C98}")
    assert h.rpc.xend_vnets() == [] and "vnet97" not in h.net.links



# -- bridges: an adopted one stays, a created one goes -------------------------

def test_adopted_bridge_survives_delete(h):
    vid = VnetId.parse("97")
    h.net.add_link("vnet97", "bridge")
    h.net.add_link("eth9")
    h.net.links["eth9"]["master"] = "vnet97"
    Path(h.store.dir).mkdir(parents=True, exist_ok=True)
    Path(h.store.bridge_record_of(vid)).write_text("vnet97\n")    # stale, from a crash
    h.rpc.xend_vnet_create(VNET97)
    assert h.store.created_bridge(vid) is None
    h.rpc.xend_vnet_delete("97", True)
    assert h.net.links["vnet97"]["kind"] == "bridge"
    assert h.net.links["eth9"]["master"] == "vnet97"
    assert h.rpc.xend_vnets() == []


def test_created_bridge_is_recorded_and_deleted(h):
    vid = VnetId.parse("97")
    h.rpc.xend_vnet_create(VNET97)
    assert h.store.created_bridge(vid) == "vnet97"
    # Lost (e.g. a reboot) and made again by reconcile: still ours.
    h.net.remove_link("vnet97")
    assert h.service.reconcile() == {}
    assert h.store.created_bridge(vid) == "vnet97"
    h.rpc.xend_vnet_delete("97")
    assert "vnet97" not in h.net.links
    assert not os.path.exists(h.store.bridge_record_of(vid))


def test_failed_create_leaves_no_bridge_record(h):
    h.net.fail["enslave"] = "boom"
    fault(h.rpc.xend_vnet_create, VNET97)
    assert "vnet97" not in h.net.links
    assert h.store.created_bridge(VnetId.parse("97")) is None


# -- reconcile (design.md 5) -------------------------------------------------------

def test_reconcile_after_engine_restart_and_bridge_loss(h):
    h.rpc.xend_vnet_create(VNET97)
    loop = ReconcileLoop(h.service, interval=0.1)
    loop.poll()
    assert not h.service.needs_reconcile()
    h.engine.restart()
    h.net.remove_link("vnet97")
    loop.poll()
    assert h.engine.vnets == {C97: ("vnif97", "none")}
    assert h.net.links["vnif97"]["master"] == "vnet97"
    assert h.net.links["vnet97"]["up"]


def test_reconcile_on_start_from_store_and_engine_outage(h):
    h.rpc.xend_vnet_create(VNET97)
    h.engine.close()
    fresh = VnetService(h.store, EngineClient(h.engine.path, timeout=2), net=h.net)
    fresh.load()
    problems = fresh.reconcile()
    assert "vnetd is not running" in problems[C97]
    assert fresh.status()["problems"] and fresh.ids() == ["97"]   # stays stored
    loop = ReconcileLoop(fresh)
    loop.poll()
    assert loop.engine_down
    h.engine = FakeEngine(h.engine.path, on_add=h.net.add_link).start()
    h.net.remove_link("vnif97")
    loop.poll()
    assert loop.engine_down is None
    assert h.engine.vnets == {C97: ("vnif97", "none")}
    assert fresh.status()["problems"] == []


def test_stored_vnet_that_cannot_come_up_is_reported_and_kept(h):
    h.rpc.xend_vnet_create(VNET97)
    h.net.remove_link("vnet97")
    h.net.add_link("vnet97", "veth")
    problems = h.service.reconcile()
    assert "not a bridge" in problems[C97]
    assert h.rpc.vnet_status()["problems"][0].startswith("vnet 97:")
    assert h.rpc.xend_vnets() == ["97"]


def test_store_problems_and_collisions_reported_on_load(h):
    os.makedirs(h.store.dir, exist_ok=True)
    with open(os.path.join(h.store.dir, "junk.sxp"), "w") as f:
        f.write("((")
    h.store.save(VnetConfig.from_text("(vnet (id 97))"))
    h.store.save(VnetConfig.from_text("(vnet (id 98) (bridge vnet97))"))
    problems = h.service.load()
    assert any("junk.sxp" in p and ".corrupt" in p for p in problems)
    assert any("vnet 98" in p for p in problems)
    assert h.service.ids() == ["97"]


def test_reconcile_loop_survives_unexpected_exceptions():
    class Flaky:
        def __init__(self):
            self.checks = 0
            self.reconciled = 0

        def needs_reconcile(self):
            self.checks += 1
            if self.checks <= 3:
                raise RuntimeError("surprise")
            return True

        def reconcile(self):
            self.reconciled += 1

    service = Flaky()
    loop = ReconcileLoop(service, interval=0.01)
    loop.start()
    try:
        wait_for(lambda: service.reconciled >= 2, what="two reconciles")
        assert loop.is_alive() and loop.last_failure is None
    finally:
        loop.stop()
        loop.join(5)


# -- hardening ------------------------------------------------------------------

def test_entity_bomb_refused_and_server_still_serves(h):
    entities = "".join(
        f' <!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">\n'
        for i in range(1, 10))
    bomb = (b'<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
            + entities.encode()
            + b"]>\n<methodCall><methodName>&lol9;</methodName><params/></methodCall>")
    reply = h.raw(post(bomb))
    assert reply.startswith(b"HTTP/1.1 200")
    assert b"<name>faultCode</name>" in reply and b"forbidden XML construct" in reply
    assert h.rpc.xend_vnets() == []


def test_huge_content_length_is_413_without_reading(h):
    head = (b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
            b"Content-Length: 104857600\r\n\r\n<?xml")
    reply = h.raw(head)
    assert reply.startswith(b"HTTP/1.1 413")
    assert b"104857600 bytes is larger than the limit" in reply
    assert h.rpc.xend_vnets() == []
    expect = (b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
              b"Content-Length: 104857600\r\n\r\n")
    reply = h.raw(expect)
    assert reply.startswith(b"HTTP/1.1 413") and b"100 Continue" not in reply
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(h.sock)
    s.sendall(post(CALL_VNETS, extra=b"Expect: 100-continue\r\n"))
    reply = b""
    while b"</methodResponse>" not in reply:
        reply += s.recv(65536)
    s.close()
    assert reply.startswith(b"HTTP/1.1 100 Continue") and b"HTTP/1.1 200" in reply


@pytest.mark.parametrize("body, message", [
    (b"<methodCall><methodName>xend_vnets</methodName>", b"malformed XML"),
    (b"not xml at all", b"malformed XML"),
    (b"<foo/>", b"bad XML-RPC request"),
    (b"<methodCall><params/></methodCall>", b"no methodName"),
    ((b"<methodCall><methodName>xend_vnet</methodName><params><param><value><int>x</int>"
      b"</value></param></params></methodCall>"), b"bad XML-RPC request"),
    (b"", b"bad XML-RPC request"),
])
def test_malformed_requests_get_faults(h, body, message):
    reply = h.raw(post(body))
    assert reply.startswith(b"HTTP/1.1 200") and b"faultCode" in reply and message in reply
    assert h.rpc.xend_vnets() == []


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET /RPC2 HTTP/1.1\r\nHost: x\r\n\r\n", b"501"),
    (post(CALL_VNETS, path="/other"), b"404"),
    (b"POST /RPC2 HTTP/1.1\r\nHost: x\r\n\r\n", b"411"),
    (b"POST /RPC2 HTTP/1.1\r\nContent-Length: -5\r\n\r\n", b"400"),
    (b"POST /RPC2 HTTP/1.1\r\nContent-Length: many\r\n\r\n", b"400"),
    (b"POST /RPC2 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", b"411"),
    (b"a b c d\r\n\r\n", b"400"),
])
def test_http_errors(h, request_bytes, status):
    assert h.raw(request_bytes).split(b" ")[1] == status
    assert h.rpc.xend_vnets() == []


def test_http_1_0_and_root_path_and_keep_alive(h):
    reply = h.raw(post(CALL_VNETS, version="HTTP/1.0", path="/"))
    assert reply.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200"))
    assert b"<array><data>\n</data></array>" in reply
    conn = UnixConn(h.sock)
    for _ in range(3):
        conn.request("POST", "/RPC2", CALL_VNETS, {"Content-Type": "text/xml"})
        response = conn.getresponse()
        assert response.status == 200 and b"<array>" in response.read()
    conn.close()


def test_stuck_client_does_not_block_others(h, monkeypatch):
    monkeypatch.setattr(server_mod.RequestHandler, "timeout", 0.5)
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stuck.connect(h.sock)
    stuck.sendall(b"POST /RPC2 HTTP/1.1\r\nContent-Length: 100\r\n\r\n<meth")
    assert h.rpc.xend_vnets() == []
    stuck.settimeout(5)
    assert stuck.recv(100) == b""      # the server gave up on it
    stuck.close()


def test_socket_that_accepts_is_never_taken_over(h):
    with pytest.raises(ServerError, match="already accepts connections"):
        XMLRPCServers(VnetAPI(h.service), h.sock, None)
    assert h.rpc.xend_vnets() == []


def test_stale_socket_replaced_and_non_socket_refused(tmp_path):
    d = tempfile.mkdtemp(prefix="xvm-")
    try:
        path = os.path.join(d, "s.sock")
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(path)
        stale.close()
        service = VnetService(VnetStore(d), EngineClient(os.path.join(d, "none")), net=FakeNet())
        servers = XMLRPCServers(VnetAPI(service), path, None)
        servers.start()
        assert legacy_proxy(path).xend_vnets() == []
        servers.close()
        assert not os.path.exists(path)
        open(path, "w").close()
        with pytest.raises(ServerError, match="not a socket"):
            XMLRPCServers(VnetAPI(service), path, None)
        new_dir = os.path.join(d, "run", "xend")
        servers = XMLRPCServers(VnetAPI(service), os.path.join(new_dir, "x.sock"), None)
        assert os.stat(new_dir).st_mode & 0o777 == 0o700
        servers.close()
    finally:
        shutil.rmtree(d)


def test_concurrent_clients(h):
    errors = []

    def client():
        try:
            for _ in range(5):
                legacy_proxy(h.sock).xend_vnets()
        except Exception as e:   # noqa: BLE001 - collected for the assert
            errors.append(e)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_tcp_key_files_only_under_the_key_directory(h, open_dir):
    key_dir = Path(h.store.key_dir)
    key_dir.mkdir(parents=True)
    (key_dir / "k97").write_text("00" * 32 + "\n")
    (key_dir / "escape").symlink_to("/etc/passwd")
    tcp = h.tcp_rpc()
    for key in ("/etc/passwd", str(key_dir / "escape"), str(key_dir / ".." / "vnet" / "x")):
        f = fault(tcp.xend_vnet_create, f"(vnet (id 97) (security conf) (key-file {key}))")
        assert f.faultCode == 2 and "key-file" in f.faultString
        assert "only under the key directory" in f.faultString and str(key_dir) in f.faultString
    f = fault(tcp.vnet_create, ["vnet", ["id", "97"], ["security", "auth"],
                                ["key-file", "/root/k"]])
    assert "only under the key directory" in f.faultString
    # Under the key directory, or over the unix socket, the rule does not apply.
    for rpc, key in ((tcp, key_dir / "k97"), (h.rpc, open_dir / "k")):
        try:
            rpc.xend_vnet_create(f"(vnet (id 97) (security conf) (key-file {key}))")
        except xmlrpc.client.Fault as e:
            assert "key directory" not in e.faultString
    assert h.rpc.xend_vnets() in ([], ["97"])


@pytest.mark.parametrize("value, field, code", [
    ("a\ufffeb", "note", "U+FFFE"), ("\uffff", "note", "U+FFFF"),
    ("x\ud800", "note", "U+D800"), ("a\x01", "note", "U+0001"),
])
def test_non_xml_characters_refused_naming_the_field(value, field, code):
    with pytest.raises(VnetFault) as info:
        check_sxpr(["vnet", ["id", "97"], [field, value]])
    assert f"{field}: value" in str(info.value) and code in str(info.value)
    with pytest.raises(VnetFault, match="key"):
        check_sxpr(["vnet", ["id", "97"], [value, "x"]])
    check_sxpr(["vnet", ["id", "97"], ["note", "tab\there, \U0001f600 and \ue000"]])


def test_non_xml_character_in_a_file_is_fault_2_and_listing_still_works(h, open_dir):
    p = open_dir / "bad.sxp"
    p.write_text("(vnet (id 97) (note 'a\ufffeb'))", encoding="utf-8")
    f = fault(h.rpc.xend_vnet_create, str(p))
    assert f.faultCode == 2 and "note" in f.faultString and "U+FFFE" in f.faultString
    assert h.rpc.xend_vnets() == [] and h.rpc.vnet_list() == []


def test_trickling_client_is_cut_off(h, monkeypatch):
    monkeypatch.setattr(server_mod.RequestHandler, "timeout", 0.8)
    monkeypatch.setattr(server_mod.RequestHandler, "request_deadline", 1.0)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(h.sock)
    s.settimeout(0.05)
    request = b"POST /RPC2 HTTP/1.1\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000
    closed_after = None
    start = time.monotonic()
    try:
        for i in range(len(request)):
            try:
                s.send(request[i:i + 1])
                if s.recv(100) == b"":
                    closed_after = time.monotonic() - start
                    break
            except TimeoutError:
                pass
            except OSError:
                closed_after = time.monotonic() - start
                break
            time.sleep(0.25)
            if time.monotonic() - start > 20:
                break
    finally:
        s.close()
    assert closed_after is not None and closed_after < 10
    assert h.rpc.xend_vnets() == []


def test_idle_keep_alive_connection_is_closed(h, monkeypatch):
    monkeypatch.setattr(server_mod.RequestHandler, "keepalive_idle", 0.3)
    conn = UnixConn(h.sock)
    body = xmlrpc.client.dumps((), "xend_vnets").encode()
    conn.request("POST", "/RPC2", body, {"Content-Type": "text/xml"})
    assert conn.getresponse().read().startswith(b"<?xml")
    conn.sock.settimeout(10)
    assert conn.sock.recv(10) == b""          # the server closed the idle connection
    conn.close()


def test_deadline_reader_with_a_fake_clock():
    a, b = socket.socketpair()
    now = [100.0]
    reader = DeadlineReader(a, per_recv=30.0, clock=lambda: now[0])
    try:
        b.sendall(b"abc")
        reader.expect_request(60.0)
        buf = bytearray(10)
        assert reader.readinto(buf) == 3 and a.gettimeout() == 30.0
        now[0] += 59.5
        b.sendall(b"d")
        assert reader.readinto(buf) == 1 and a.gettimeout() == pytest.approx(0.5)
        now[0] += 1
        with pytest.raises(TimeoutError):
            reader.readinto(buf)
        # Keep-alive: idle until the first byte, then a fresh deadline.
        reader.expect_next_request(5.0, 60.0)
        assert reader.deadline == now[0] + 5.0
        b.sendall(b"e")
        assert reader.readinto(buf) == 1 and reader.deadline == now[0] + 60.0
        reader.request_received()
        assert reader.deadline is None and a.gettimeout() == 30.0
    finally:
        a.close()
        b.close()


# -- beside xend: forwarding (design.md 9) ------------------------------------------

def test_unknown_methods_forwarded_to_upstream():
    upstream = xmlrpc.server.SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False,
                                                allow_none=True)
    upstream.register_function(lambda: ["Domain-0"], "xend_domains")
    t = threading.Thread(target=upstream.serve_forever, daemon=True)
    t.start()
    host, port = upstream.server_address
    harness = Harness(upstream=f"http://{host}:{port}")
    try:
        assert harness.rpc.xend_domains() == ["Domain-0"]
        assert fault(harness.rpc.xend_nothing).faultCode == 1
        assert harness.rpc.xend_vnets() == []       # served here, not forwarded
    finally:
        harness.close()
        upstream.shutdown()
        upstream.server_close()
    dead = Harness(upstream=f"http://{host}:{port}")
    try:
        f = fault(dead.rpc.xend_domains)
        assert f.faultCode == 1 and "not reachable" in f.faultString
    finally:
        dead.close()


def test_upstream_equal_to_own_socket_refused_by_the_server(h, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(os.path.dirname(h.sock))
    own = str(tmp_path / "s.sock")
    for upstream in (f"httpu://{own}", f"httpu://{tmp_path}/./s.sock", "gopher://x"):
        with pytest.raises(ServerError, match="xend-vnet-upstream"):
            XMLRPCServers(VnetAPI(h.service), own, None, upstream)
    with pytest.raises(ServerError, match="own socket"):
        XMLRPCServers(VnetAPI(h.service), str(link / "other.sock"), None,
                      f"httpu://{os.path.dirname(h.sock)}/other.sock")


def test_forwarding_failures_are_fault_1(monkeypatch):
    harness = Harness(upstream="http://127.0.0.1:9")
    try:
        def broken(uri):
            raise ValueError("bad upstream reply")
        monkeypatch.setattr(server_mod, "upstream_connection", broken)
        f = fault(harness.rpc.xend_domains)
        assert f.faultCode == 1 and "bad upstream reply" in f.faultString
        assert harness.rpc.xend_vnets() == []
    finally:
        harness.close()


def test_slow_upstream_is_not_cut_off(monkeypatch):
    monkeypatch.setattr(server_mod.RequestHandler, "timeout", 0.5)
    monkeypatch.setattr(server_mod.RequestHandler, "request_deadline", 0.5)
    upstream = xmlrpc.server.SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False,
                                                allow_none=True)
    upstream.register_function(lambda: time.sleep(1.5) or ["Domain-0"], "xend_domains")
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    harness = Harness(upstream="http://%s:%d" % upstream.server_address)
    try:
        assert harness.rpc.xend_domains() == ["Domain-0"]
    finally:
        harness.close()
        upstream.shutdown()
        upstream.server_close()


# -- reading the caller's file -----------------------------------------------------

@pytest.fixture
def open_dir():
    """A directory every uid may reach (pytest's tmp_path is under a 0700 dir)."""
    d = tempfile.mkdtemp(prefix="xvm-")
    os.chmod(d, 0o755)
    yield Path(d)
    shutil.rmtree(d)


def test_caller_permissions(open_dir):
    tmp_path = open_dir
    p = tmp_path / "secret.sxp"
    p.write_text(VNET97)
    os.chmod(p, 0o600)
    me = os.getpid()
    assert read_caller_file(str(p), Caller("unix", me, 0, 0)) == VNET97
    with pytest.raises(CallerFileError, match="Permission denied"):
        read_caller_file(str(p), Caller("unix", me, 65534, 65534))
    os.chmod(p, 0o604)
    assert read_caller_file(str(p), Caller("unix", me, 65534, 65534)) == VNET97
    os.chmod(p, 0o640)
    os.chown(p, 0, 65533)
    with pytest.raises(CallerFileError):
        read_caller_file(str(p), Caller("unix", me, 65534, 65534))
    assert read_caller_file(str(p), Caller("unix", me, 65534, 65533)) == VNET97
    with pytest.raises(CallerFileError, match="not a regular file"):
        read_caller_file(str(tmp_path), Caller("unix", me, 0, 0))
    os.chmod(p, 0o644)
    os.chmod(tmp_path, 0o700)
    with pytest.raises(CallerFileError, match="Permission denied"):
        read_caller_file(str(p), Caller("unix", me, 65534, 65534))
    os.chmod(tmp_path, 0o711)
    assert read_caller_file(str(p), Caller("unix", me, 65534, 65534)) == VNET97
    assert read_caller_file(str(tmp_path / ".." / tmp_path.name / "secret.sxp"),
                            Caller("unix", me, 0, 0)) == VNET97
    with pytest.raises(CallerFileError, match="File not found"):
        read_caller_file(str(p) + "/x", Caller("unix", me, 0, 0))
    with pytest.raises(CallerFileError, match="over TCP"):
        read_caller_file(str(p), Caller("tcp"))
    big = tmp_path / "big"
    big.write_bytes(b"(" * (2 * 1024 * 1024))
    with pytest.raises(CallerFileError, match="larger than"):
        read_caller_file(str(big), Caller("unix", me, 0, 0))
    with pytest.raises(CallerFileError, match="pid"):
        read_caller_file("x", Caller("unix", 2**22 + 12345, 0, 0))


@needs_root
def test_caller_file_read_with_the_callers_identity(open_dir, monkeypatch):
    secret = open_dir / "secret"
    secret.mkdir(mode=0o700)
    (secret / "conf.sxp").write_text(VNET97)
    os.chmod(secret / "conf.sxp", 0o644)
    (open_dir / "link").symlink_to(secret)
    (open_dir / "flink").symlink_to(secret / "conf.sxp")
    (open_dir / "ok.sxp").write_text(VNET97)
    os.chmod(open_dir / "ok.sxp", 0o644)
    os.mkfifo(open_dir / "fifo")
    monkeypatch.chdir(open_dir)
    nobody = Caller("unix", os.getpid(), 65534, 65534)
    for path in ("secret/conf.sxp", "link/conf.sxp", "flink", str(open_dir / "link/conf.sxp")):
        with pytest.raises(CallerFileError, match="Permission denied"):
            read_caller_file(path, nobody)
    assert read_caller_file("ok.sxp", nobody) == VNET97
    assert read_caller_file(str(open_dir / "ok.sxp"), nobody) == VNET97
    assert read_caller_file("link/conf.sxp", Caller("unix", os.getpid(), 0, 0)) == VNET97
    with pytest.raises(CallerFileError, match="not a regular file"):
        read_caller_file("fifo", nobody)
    with pytest.raises(CallerFileError, match="File not found"):
        read_caller_file("missing.sxp", nobody)


def _acl_user_read(path: Path, uid: int) -> bool:
    """Give ``uid`` read access by a POSIX ACL entry; False if the file system has none."""
    entries = [(0x01, 6, 0xFFFFFFFF), (0x02, 4, uid), (0x04, 0, 0xFFFFFFFF),
               (0x10, 4, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF)]
    value = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)
    try:
        os.setxattr(path, "system.posix_acl_access", value)
    except OSError:
        return False
    return True


@needs_root
def test_caller_file_acl_is_honoured(open_dir):
    p = open_dir / "acl.sxp"
    p.write_text(VNET97)
    os.chmod(p, 0o600)
    if not _acl_user_read(p, 65534):
        pytest.skip("no POSIX ACLs on this file system")
    assert read_caller_file(str(p), Caller("unix", os.getpid(), 65534, 65534)) == VNET97
    with pytest.raises(CallerFileError, match="Permission denied"):
        read_caller_file(str(p), Caller("unix", os.getpid(), 65533, 65533))


@needs_root
@pytest.mark.root
def test_caller_file_in_another_mount_namespace(open_dir):
    """A file only the caller's mount namespace shows is read (relative and absolute)."""
    mnt = open_dir / "mnt"
    mnt.mkdir()
    script = (f"mount -t tmpfs none {mnt} && echo '{VNET97}' > {mnt}/x.sxp && cd {mnt} "
              "&& echo ready && exec sleep 30")
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                             script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert not (mnt / "x.sxp").exists()          # not in our namespace
        caller = Caller("unix", proc.pid, 0, 0)
        assert read_caller_file("x.sxp", caller).strip() == VNET97
        assert read_caller_file(str(mnt / "x.sxp"), caller).strip() == VNET97
    finally:
        proc.kill()
        proc.wait()



# -- the rest ---------------------------------------------------------------------


def test_status_method(h):
    h.rpc.xend_vnet_create(VNET97)
    assert h.rpc.vnet_status() == {"vnets": ["97"], "problems": [], "store_problems": [],
                                   "pending_removals": []}


def test_server_close_is_quick(h):
    start = time.monotonic()
    h.servers.close()
    assert time.monotonic() - start < 10


@settings(max_examples=200)
@given(st.binary(max_size=300) | st.text(alphabet="<>/methodCalNnparmsvlu a1", max_size=200)
       .map(str.encode))
def test_parse_request_only_raises_value_error(body):
    try:
        method, params = parse_request(body)
    except ValueError:
        return
    assert isinstance(method, str) and isinstance(params, tuple)
