"""vnetd's readiness for its ``Type=notify`` unit (root).

``xend-vnet install`` writes vnetd.service with ``Type=notify``: systemd
starts xend-vnet and the domains only after vnetd says READY=1, which it
must say once its control socket answers, and STOPPING=1 when it stops.
"""

from __future__ import annotations

import os
import socket

import pytest
from netns import Lab

pytestmark = pytest.mark.root


def test_vnetd_says_ready_once_it_answers_and_stopping_when_it_stops(monkeypatch):
    lab = Lab("xv6-ntf-")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        ns = lab.host("h", "192.0.2.1", underlay=lab.underlay())
        path = os.path.join(lab.tmp, "notify")
        notify.bind(path)
        notify.settimeout(20)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        engine = lab.start_vnetd(ns, "--no-default-vnets", wait=False)
        try:
            assert notify.recv(100) == b"READY=1", engine.log()
        except TimeoutError:
            pytest.fail("vnetd sent no READY=1 within 20 s: its unit is Type=notify, so "
                        "daemon.main must call sdnotify.notify('READY=1') once it serves; "
                        f"log: {engine.log()}")
        # Ready means ready: the control socket answers at once.
        assert engine.request("(engine.status)", timeout=2).startswith("(engine")
        assert engine.stop() == 0
        assert notify.recv(100) == b"STOPPING=1"
    finally:
        notify.close()
        lab.close()
