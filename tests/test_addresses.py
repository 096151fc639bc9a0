"""The care-of address and the underlay (datapath/addresses.py), from
readings of the host made up here (protocol.md 3.4)."""

from __future__ import annotations

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from xend_vnet.kernel_shim.core.engine import EngineCore
from xend_vnet.kernel_shim.datapath import addresses as addresses_mod
from xend_vnet.kernel_shim.datapath.addresses import HostAddresses, Underlay, care_of_address

HOST = Underlay([(1, "127.0.0.1"), (2, "192.0.2.1"), (3, "10.0.0.1")], 3, "eth1", 9000)


def test_the_care_of_address_is_the_configured_one_else_the_devices():
    assert care_of_address(HOST, "198.51.100.7") == "198.51.100.7"
    assert care_of_address(HOST, None) == "10.0.0.1"
    assert care_of_address(HOST._replace(index=0), None) == "192.0.2.1"
    assert care_of_address(Underlay([(1, "127.0.0.1")], 0, "", None), None) is None


@pytest.fixture
def reading(monkeypatch):
    seen = {"now": HOST}

    def read(device, group):
        if isinstance(seen["now"], Exception):
            raise seen["now"]
        seen["device"], seen["group"] = device, group
        return seen["now"]

    monkeypatch.setattr(addresses_mod, "read_underlay", read)
    return seen


def test_a_refresh_applies_the_reading_to_the_core(reading):
    core = EngineCore()
    host = HostAddresses(core, None, None)
    assert host.refresh() is True                       # 1500 -> 9000
    assert reading["group"] == core.mcaddr and reading["device"] is None
    assert core.own_addresses == {"127.0.0.1", "192.0.2.1", "10.0.0.1"}
    assert core.self_address == "10.0.0.1" and core.underlay_mtu == 9000
    assert host.device == "eth1" and host.device_index == 0
    assert host.refresh() is False                      # nothing changed
    reading["now"] = HOST._replace(mtu=68)
    assert host.refresh() is False and host.underlay_mtu == 9000   # not believed


def test_with_a_device_its_index_is_kept_and_its_name_shown(reading):
    host = HostAddresses(EngineCore(), "eth1", None)
    host.refresh()
    assert host.device == "eth1" and host.device_index == 3


def test_the_configured_address_is_the_source_only_when_it_is_ours(reading):
    core = EngineCore()
    host = HostAddresses(core, None, "192.0.2.1")
    host.refresh()
    assert core.self_address == "192.0.2.1" and host.source() == "192.0.2.1"
    behind_nat = HostAddresses(core, None, "198.51.100.7")
    behind_nat.refresh()
    assert behind_nat.source() is None


def test_an_unreadable_host_changes_nothing(reading, caplog):
    core = EngineCore()
    host = HostAddresses(core, None, None)
    reading["now"] = NetlinkError(1)
    assert host.refresh() is False
    assert core.self_address is None and "cannot read the host's addresses" in caplog.text
