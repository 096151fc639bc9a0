"""VarpCache: learning, INCOMPLETE on lookup miss, ageing (protocol.md 3.5)."""

from xend_vnet.kernel_shim.core.bounds import LIMITS
from xend_vnet.kernel_shim.core.varp_cache import INCOMPLETE, REACHABLE, VarpCache

V1 = bytes(15) + b"\x97"
V2 = bytes(15) + b"\x98"
M1 = bytes.fromhex("aa0000000001")
M2 = bytes.fromhex("aa0000000002")


def test_learn_new_refresh_move():
    c = VarpCache()
    assert c.learn(V1, M1, "192.0.2.2", 1.0) is True
    assert c.learn(V1, M1, "192.0.2.2", 2.0) is False
    assert c.get(V1, M1).timestamp == 2.0
    assert c.learn(V1, M1, "192.0.2.3", 3.0) is True
    assert c.resolve(V1, M1, 3.0) == "192.0.2.3"
    assert c.resolve(V2, M1, 3.0) is None            # keyed by vnet too


def test_miss_creates_incomplete_without_refreshing():
    c = VarpCache()
    assert c.resolve(V1, M1, 5.0) is None
    e = c.get(V1, M1)
    assert (e.state, e.addr, e.timestamp) == (INCOMPLETE, None, 5.0)
    assert c.resolve(V1, M1, 50.0) is None
    assert c.get(V1, M1).timestamp == 5.0
    assert c.learn(V1, M1, "192.0.2.2", 51.0) is True
    assert c.get(V1, M1).state == REACHABLE


def test_incomplete_entries_are_bounded():
    c = VarpCache()
    for i in range(LIMITS["varp"].per_source + 10):
        c.resolve(V1, i.to_bytes(6, "big"), 0.0)
    assert len(c) == LIMITS["varp"].per_source      # a domain's lookups: one source
    c.flush()
    c.resolve(V1, M1, 0.0)
    assert len(c) == 1


def test_sweep_strictly_older_than_ttl():
    c = VarpCache()
    c.learn(V1, M1, "192.0.2.2", 0.0)
    c.learn(V1, M2, "192.0.2.2", 30.0)
    assert c.sweep(60.0, 60.0) == 0
    assert c.sweep(60.5, 60.0) == 1
    assert c.get(V1, M1) is None and c.get(V1, M2) is not None


def test_forget_flush_remove_vnet_and_listing_order():
    c = VarpCache()
    c.learn(V2, M1, "192.0.2.2", 0.0)
    c.learn(V1, M2, "192.0.2.2", 0.0)
    c.learn(V1, M1, "192.0.2.2", 0.0)
    assert [(v, m) for v, m, _ in c.entries()] == [(V1, M1), (V1, M2), (V2, M1)]
    c.remove_vnet(V1)
    assert len(c) == 1
    assert c.forget(V2, M1) and not c.forget(V2, M1)
    c.learn(V1, M1, "192.0.2.2", 0.0)
    c.flush()
    assert len(c) == 0


def test_total_entries_bounded():
    c = VarpCache()
    c.table.set_limit(V1, 3)
    for i in range(3):
        assert c.learn(V1, i.to_bytes(6, "big"), "192.0.2.2", 0.0)
    assert c.learn(V1, M1, "192.0.2.2", 0.0) is False and c.get(V1, M1) is None
    assert c.resolve(V1, M2, 0.0) is None and c.get(V1, M2) is None
    assert c.learn(V1, (0).to_bytes(6, "big"), "192.0.2.3", 1.0) is True   # moves still work
