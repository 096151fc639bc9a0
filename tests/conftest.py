"""Fixtures shared by the test modules that talk to the fake engine or to
xend-vnet's XML-RPC server in this process."""

from __future__ import annotations

import pytest
from fake_engine import FakeEngine
from vnet_server_harness import Harness


@pytest.fixture
def engine(tmp_path):
    """A started FakeEngine (fake_engine.py) with no vnets, on a socket in tmp_path."""
    fake = FakeEngine(str(tmp_path / "vnetd.sock")).start()
    yield fake
    fake.close()


@pytest.fixture
def server(monkeypatch):
    """xend-vnet's server over a fake engine (vnet_server_harness.py), the one
    ``xm`` reaches through XM_SERVER."""
    h = Harness()
    monkeypatch.setenv("XM_SERVER", f"httpu://{h.sock}")
    yield h
    h.close()
