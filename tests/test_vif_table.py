"""VifTable: local MACs per vnet, new-MAC detection and ageing (protocol.md 3.6)."""

from xend_vnet.kernel_shim.core.peer_table import PeerTable
from xend_vnet.kernel_shim.core.vif_table import VifTable

V1 = bytes(15) + b"\x97"
V2 = bytes(15) + b"\x98"
M1 = bytes.fromhex("aa0000000001")
M2 = bytes.fromhex("aa0000000002")


def test_update_reports_new_macs_once():
    t = VifTable()
    assert t.update(V1, M1, 0.0) is True
    assert t.update(V1, M1, 1.0) is False
    assert t.update(V2, M1, 1.0) is True
    assert (V1, M1) in t and (V1, M2) not in t


def test_sweep_and_counts():
    t = VifTable()
    t.update(V1, M1, 0.0)
    t.update(V1, M2, 50.0)
    assert t.sweep(60.0, 60.0) == []
    assert t.sweep(61.0, 60.0) == [(V1, M1)]
    assert t.sweeps == 2 and len(t) == 1


def test_remove_and_remove_vnet_and_entries():
    t = VifTable()
    t.update(V2, M1, 3.0)
    t.update(V1, M2, 2.0)
    t.update(V1, M1, 1.0)
    assert list(t.entries()) == [(V1, M1, 1.0), (V1, M2, 2.0), (V2, M1, 3.0)]
    assert t.remove(V1, M1) and not t.remove(V1, M1)
    t.remove_vnet(V1)
    assert list(t.entries()) == [(V2, M1, 3.0)]


def test_peer_table():
    p = PeerTable()
    p.add("198.51.100.9", 1798)
    peer = p.add("192.0.2.10", 1798)
    peer.tx_packets = 5
    assert p.add("192.0.2.10", 1543) is peer and peer.port == 1543 and peer.tx_packets == 5
    assert [x.addr for x in p.sorted()] == ["192.0.2.10", "198.51.100.9"]
    p.remove("192.0.2.10")
    assert p.get("192.0.2.10") is None and len(p) == 1


def test_full_table_records_nothing_new():
    t = VifTable()
    t.table.set_limit(V1, 1)
    assert t.update(V1, M1, 0.0) is True
    assert t.update(V1, M2, 0.0) is False and (V1, M2) not in t
    assert t.update(V1, M1, 5.0) is False and list(t.entries()) == [(V1, M1, 5.0)]
