"""The kernel data path's map records (datapath/kernel/maps.py) against
its C header, and their packing round trips (hypothesis)."""

from __future__ import annotations

import os
import re
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xend_vnet.kernel_shim.core.bounds import LIMITS
from xend_vnet.kernel_shim.datapath.kernel import maps
from xend_vnet.vnet_id import VnetId

HEADER = os.path.join(os.path.dirname(maps.__file__), "bpf", "vnet_shim.h")

vids = st.binary(min_size=16, max_size=16).map(VnetId)
macs = st.binary(min_size=6, max_size=6)
addrs = st.integers(0, 2**32 - 1).map(lambda n: socket.inet_ntoa(n.to_bytes(4, "big")))


def header_text() -> str:
    with open(HEADER) as f:
        return f.read()


def define(name: str) -> str:
    m = re.search(rf"#define {name} (.+?)(\s*/\*|$)", header_text(), re.M)
    assert m, name
    return m.group(1).strip()


def test_constants_match_the_header():
    assert int(define("VS_LAYOUT_VERSION")) == maps.LAYOUT_VERSION
    assert int(define("VS_MAX_VNETS")) == maps.MAX_VNETS
    assert int(define("VS_MAX_REMOTES")) == maps.MAX_REMOTES
    assert int(define("VS_MAX_LOCALS")) == maps.MAX_LOCALS
    assert int(define("VS_MAX_SEEN")) == maps.MAX_SEEN
    assert int(define("VS_EVENT_BUDGET")) == maps.EVENT_BUDGET
    assert define("VS_EVENTS_BYTES") == "(256 * 1024)" and maps.EVENTS_BYTES == 256 * 1024
    assert int(define("VS_ENCAP_LEN")) == maps.ENCAP_LEN == 20 + 8 + 4 + 18 + 14


def test_maps_hold_at_most_what_the_core_holds():
    assert maps.MAX_REMOTES == LIMITS["varp"].total
    assert maps.MAX_LOCALS == LIMITS["vif"].total


def test_counter_order_matches_the_header():
    body = re.search(r"enum vs_counter \{(.*?)\};", header_text(), re.S).group(1)
    names = [n.strip().rstrip(",") for n in body.splitlines() if n.strip()]
    assert names[-1] == "VS_C_COUNT"
    assert [n[len("VS_C_"):].lower() for n in names[:-1]] == list(maps.COUNTER_NAMES)


def test_record_sizes():
    assert maps.CONFIG.size == 24
    assert maps.MAC_KEY.size == 24
    assert maps.REMOTE.size == 16
    assert maps.LOCAL.size == 8
    assert maps.VNET.size == 16
    assert maps.DEV.size == 32
    assert maps.EVENT.size == 32
    assert maps.COUNTERS.size == 8 * len(maps.COUNTER_NAMES)


def test_mss_clamp():
    assert maps.mss_clamp(1500, 1500) == 1396
    assert maps.mss_clamp(1436, 1500) == 1396
    assert maps.mss_clamp(1400, 1500) == 1360
    assert maps.mss_clamp(9000, 9000) == 8896
    assert maps.mss_clamp(68, 100) == 0


@given(addrs, st.integers(0, 2**32 - 1), st.integers(1, 65535), st.integers(68, 65535),
       st.integers(68, 65535), st.integers(0, 65535))
def test_config_round_trip(addr, ifindex, port, ul_mtu, tap_mtu, mss):
    c = maps.Config(addr, ifindex, port, ul_mtu, tap_mtu, mss)
    assert maps.Config.unpack(c.pack()) == c


@given(vids, macs, addrs, st.booleans())
def test_remote_round_trip(vid, mac, addr, peer):
    key = maps.mac_key(vid, mac)
    assert maps.unpack_mac_key(key) == (vid, mac)
    assert maps.unpack_remote(maps.pack_remote(addr, peer)) == (addr, peer)


@given(addrs, st.booleans(), st.integers(0, 2**64 - 1))
def test_use_stamps(addr, peer, used):
    """The engine writes 0; the programs write their clock at a use."""
    assert maps.unpack_used(maps.pack_remote(addr, peer)) == 0
    assert maps.unpack_used(maps.pack_local()) == 0
    stamped = maps.pack_remote(addr, peer)[:8] + used.to_bytes(8, "little")
    assert maps.unpack_used(stamped) == used and maps.unpack_remote(stamped) == (addr, peer)
    assert maps.unpack_used(used.to_bytes(8, "little")) == used
    with pytest.raises(maps.MapValueError):
        maps.unpack_used(b"\0" * 12)


def test_the_structs_of_the_header_hold_what_maps_packs():
    text = header_text()
    remote = re.search(r"struct vs_remote \{(.*?)\};", text, re.S).group(1)
    assert re.findall(r"__u(\d+) (\w+);", remote) == [("32", "addr"), ("32", "flags"),
                                                       ("64", "used")]
    local = re.search(r"struct vs_local \{(.*?)\};", text, re.S).group(1)
    assert re.findall(r"__u(\d+) (\w+);", local) == [("64", "used")]
    assert int(define("VS_USED_EVERY_NS").rstrip("ULL")) == 10**9


@given(vids, st.integers(0, maps.MAX_VNETS - 1), st.integers(1, 2**31),
       st.integers(0, 2**31), st.sampled_from([maps.DEV_TAP, maps.DEV_PORT]))
def test_vnet_and_device_round_trip(vid, index, ifindex, other, kind):
    assert maps.unpack_vid_key(maps.vid_key(vid)) == vid
    e = maps.VnetEntry(ifindex, other, ifindex + 1, index)
    assert maps.VnetEntry.unpack(e.pack()) == e
    d = maps.DevEntry(vid, index, kind, other)
    assert maps.DevEntry.unpack(d.pack()) == d
    assert maps.unpack_dev_key(maps.dev_key(ifindex)) == ifindex


def test_device_kinds_match_the_header():
    assert int(define("VS_DEV_TAP")) == maps.DEV_TAP
    assert int(define("VS_DEV_PORT")) == maps.DEV_PORT
    assert define("VS_MAX_DEVS") == "(2 * VS_MAX_VNETS)" and maps.MAX_DEVS == 2 * maps.MAX_VNETS
    with pytest.raises(maps.MapValueError):
        maps.DevEntry(VnetId.parse("97"), 0, 7, 0).pack()
    with pytest.raises(maps.MapValueError):
        maps.DevEntry.unpack(b"\0" * 24)


@given(st.one_of(st.builds(maps.RemoteSeen, vids, macs, addrs),
                 st.builds(maps.LocalSeen, vids, macs)))
def test_event_round_trip(event):
    assert maps.unpack_event(maps.pack_event(event)) == event


@given(st.binary(max_size=64))
def test_event_bytes_never_crash(data):
    try:
        e = maps.unpack_event(data)
    except maps.MapValueError:
        return
    assert isinstance(e, (maps.RemoteSeen, maps.LocalSeen))


@given(st.lists(st.dictionaries(st.sampled_from(maps.COUNTER_NAMES), st.integers(0, 2**40)),
                min_size=1, max_size=8))
def test_counters_sum_over_cpus(per_cpu):
    data = b"".join(maps.pack_counters(c) for c in per_cpu)
    totals = maps.sum_counters(data, len(per_cpu))
    for name in maps.COUNTER_NAMES:
        assert totals[name] == sum(c.get(name, 0) for c in per_cpu)


def test_bad_input_is_a_clear_error():
    vid = VnetId.parse("97")
    with pytest.raises(maps.MapValueError):
        maps.mac_key(vid, b"\0" * 5)
    with pytest.raises(maps.MapValueError):
        maps.pack_remote("not-an-address", True)
    with pytest.raises(maps.MapValueError):
        maps.Config("192.0.2.1", 1, 70000, 1500, 1500, 1396).pack()
    with pytest.raises(maps.MapValueError):
        maps.sum_counters(b"\0" * 7, 1)
    with pytest.raises(maps.MapValueError):
        maps.unpack_mac_key(b"\0" * 23)
