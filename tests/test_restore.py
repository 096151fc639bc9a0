"""xend-vnet's start with many stored vnets (design.md 5): the socket answers
at once, listings come from the store while the restore runs, a create or
delete during the restore is serialised with it, and readiness (the start
pipe and READY=1) waits until every stored vnet is up.  The engine is the
fake one with a slow ``vnet.add``; the network is in memory."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import tempfile
import threading
import time

import pytest
from fake_engine import FakeEngine
from fake_net import FakeNet
from vnet_server_harness import legacy_proxy

from xend_vnet.config import VnetConfig
from xend_vnet.engine_client import EngineClient
from xend_vnet.store import VnetStore
from xend_vnet.xend_config import ServerSettings
from xend_vnet.xmlrpc import cli
from xend_vnet.xmlrpc import service as service_mod
from xend_vnet.xmlrpc.service import VnetService

STORED = [f"{0x1000 + i:x}" for i in range(24)]
SLOW_ADD = 0.05


class Start:
    """One xend-vnet ``serve`` over a store of STORED vnets, a fake engine whose
    ``vnet.add`` takes SLOW_ADD seconds, and an in-memory network."""

    def __init__(self, monkeypatch):
        self.dir = tempfile.mkdtemp(prefix="xrs-unit-")
        self.net = FakeNet()
        self.engine = FakeEngine(os.path.join(self.dir, "vnetd.sock"),
                                 on_add=self._slow_add, on_del=self.net.remove_link).start()
        self.state = os.path.join(self.dir, "state")
        store = VnetStore(self.state)
        for id_text in STORED:
            store.save(VnetConfig.from_text(f"(vnet (id {id_text}))"))
        self.sock = os.path.join(self.dir, "xmlrpc.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(os.path.join(self.dir, "notify"))
        self.notify.settimeout(30)
        monkeypatch.setenv("NOTIFY_SOCKET", os.path.join(self.dir, "notify"))
        monkeypatch.setattr(cli, "VnetService", lambda store, engine: VnetService(
            store, EngineClient(self.engine.path, timeout=10), net=self.net))
        monkeypatch.setattr(service_mod, "RESTORE_BATCH", 5)
        self.ready: list[tuple[float, str | None, int]] = []

    def _slow_add(self, ifname: str) -> None:
        time.sleep(SLOW_ADD)
        self.net.add_link(ifname)

    def on_ready(self, error: str | None) -> None:
        self.ready.append((time.monotonic(), error, len(self.engine.vnets)))

    def serve(self) -> int:
        """Run the server in this (the main) thread until SIGTERM."""
        args = argparse.Namespace(no_engine=True, reconcile_interval=3600.0)
        settings = ServerSettings("standalone", self.sock, None, None, None, self.state,
                                  self.engine.path)
        term, intr = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
        try:
            return cli.serve(args, settings, [], os.path.join(self.dir, "pid"), self.on_ready)
        finally:
            signal.signal(signal.SIGTERM, term)
            signal.signal(signal.SIGINT, intr)

    def all_up(self, ids) -> bool:
        return all(self.net.links.get(f"vnif{int(i, 16):04x}", {}).get("master") == f"vnet{i}"
                   for i in ids)

    def close(self) -> None:
        self.notify.close()
        self.engine.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def start(monkeypatch):
    s = Start(monkeypatch)
    yield s
    s.close()


def _client(start: Start, body) -> threading.Thread:
    """Run ``body`` in a thread, then stop the server (SIGTERM to ourselves)."""
    failures: list[BaseException] = []

    def run():
        try:
            body()
        except BaseException as e:  # noqa: BLE001 -- re-raised in the test
            failures.append(e)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    t = threading.Thread(target=run, daemon=True)
    t.failures = failures
    t.start()
    return t


def _wait_socket(path: str) -> None:
    deadline = time.monotonic() + 10
    while not os.path.exists(path):
        assert time.monotonic() < deadline, "the socket never appeared"
        time.sleep(0.005)


def test_socket_answers_from_the_store_before_the_restore_is_done(start):
    seen = {}

    def body():
        _wait_socket(start.sock)
        rpc = legacy_proxy(start.sock)
        seen["ids"] = rpc.xend_vnets()
        seen["list"] = rpc.vnet_list()
        seen["engine_then"] = len(start.engine.vnets)
        seen["ready_then"] = list(start.ready)
        seen["before_ready"] = messages_until_ready(start.notify)
        seen["engine_at_ready"] = len(start.engine.vnets)
        seen["all_up_at_ready"] = start.all_up(STORED)

    t = _client(start, body)
    assert start.serve() == 0
    t.join(10)
    assert not t.failures, t.failures
    assert seen["ids"] == STORED
    assert [c[1] for c in seen["list"]] == [["id", i] for i in STORED]
    # Answered while the engine still lacked stored vnets, before readiness.
    assert seen["engine_then"] < len(STORED) and seen["ready_then"] == []
    # Readiness: the start pipe and READY=1 only once every vnet is up.
    assert seen["engine_at_ready"] == len(STORED) and seen["all_up_at_ready"]
    # Each batch restored extends systemd's start timeout, so a long restore
    # is not killed before its READY.
    assert seen["before_ready"] and all(
        m == b"EXTEND_TIMEOUT_USEC=90000000" for m in seen["before_ready"])
    ((_, error, engine_vnets),) = start.ready
    assert error is None and engine_vnets == len(STORED)


def messages_until_ready(notify) -> list[bytes]:
    """The sd_notify messages sent before READY=1 (which must come)."""
    before = []
    while (message := notify.recv(100)) != b"READY=1":
        before.append(message)
    return before


def test_create_and_delete_during_the_restore_are_serialised_with_it(start):
    seen = {}

    def body():
        _wait_socket(start.sock)
        rpc = legacy_proxy(start.sock)
        rpc.xend_vnet_create("(vnet (id 97))")
        rpc.xend_vnet_delete(STORED[-1])          # not restored yet: batches of 5
        seen["restoring"] = not start.ready
        messages_until_ready(start.notify)
        seen["ids"] = rpc.xend_vnets()
        seen["status"] = rpc.vnet_status()

    t = _client(start, body)
    start.serve()
    t.join(10)
    assert not t.failures, t.failures
    assert seen["restoring"]
    assert seen["ids"] == ["97", *STORED[:-1]]
    assert seen["status"]["problems"] == []
    # The deleted vnet stays gone: the restore did not bring it back.
    canonical = [c for c in start.engine.vnets if c.endswith(STORED[-1])]
    assert canonical == [] and f"vnet{STORED[-1]}" not in start.net.links
    assert start.all_up(STORED[:-1]) and start.net.links["vnif0097"]["master"] == "vnet97"
    assert not os.path.exists(os.path.join(start.state, "vnet",
                                           f"0-0-0-0-0-0-0-{STORED[-1]}.sxp"))


def test_stop_during_the_restore_reports_no_readiness(start):
    def body():
        _wait_socket(start.sock)

    t = _client(start, body)
    assert start.serve() == 0
    t.join(10)
    ((_, error, engine_vnets),) = start.ready
    assert error and "stopped before" in error and engine_vnets < len(STORED)
    start.notify.settimeout(0.2)
    with pytest.raises(TimeoutError):
        while start.notify.recv(100) != b"READY=1":
            pass


def test_restore_reads_the_links_and_the_engine_listing_once(start):
    service = VnetService(VnetStore(start.state), EngineClient(start.engine.path), start.net)
    service.load()
    assert service.reconcile() == {}
    assert start.net.batches == 1
    assert len(start.engine.sent("vnet.list")) == 1
    assert len(start.engine.sent("vnet.add")) == len(STORED)
    # Again, all present: no vnet.add at all, one listing.
    assert service.reconcile() == {}
    assert len(start.engine.sent("vnet.add")) == len(STORED)
    assert len(start.engine.sent("vnet.list")) == 2
