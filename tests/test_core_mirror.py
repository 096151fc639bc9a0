"""The core as the kernel path's control plane (design.md 1.1, core/mirror.py):
its tables report their changes, the kernel's reports teach the tables
within the same bounds, and announces say which engines decapsulate a vnet
in their kernel (``CAP_KERNEL``, wire/segments.py)."""

from __future__ import annotations

import pytest
from core_helpers import ME, consistent, data, frame, make_core
from security_helpers import KEY1, V97

from xend_vnet.kernel_shim.core.bounds import LIMITS
from xend_vnet.kernel_shim.core.engine import SendUdp
from xend_vnet.kernel_shim.core.mirror import KERNEL_PEER, VARP, VIF, TableChange
from xend_vnet.kernel_shim.core.peer_caps import CAP_REFRESH, CAP_TTL
from xend_vnet.kernel_shim.wire import segments
from xend_vnet.kernel_shim.wire.codec import VARP_REQUEST, VarpHeader, encode_announce
from xend_vnet.vnet_id import VnetId

V2 = VnetId.parse("2")
GROUP = "224.10.0.1"
HOST_B = "192.0.2.2"
HOST_C = "192.0.2.3"
MAC_A = bytes.fromhex("aa0000000001")      # a domain of ours
MAC_B = bytes.fromhex("aa0000000002")      # a domain on HOST_B
MAC_C = bytes.fromhex("aa0000000003")
BCAST = b"\xff" * 6
KERNEL_TRAILER = segments.trailer(segments.CAP_KERNEL)
KERNEL_PROBE = segments.trailer(segments.CAP_KERNEL | segments.CAP_PROBE)


def mirrored(offload: bool = False, kernel: bool = True, **options):
    c = make_core(ME, vnet=V2, ifname="vnif0002", offload=offload, **options)
    c.mirror_tables()
    if kernel:
        c.set_kernel(V2, True)
    return c


def varp(mac: bytes, addr: str | None, present: bool = True, vid: VnetId = V2) -> TableChange:
    return TableChange(VARP, vid, mac, addr, present)


def vif(mac: bytes, present: bool = True, vid: VnetId = V2) -> TableChange:
    return TableChange(VIF, vid, mac, None, present)


def kpeer(addr: str, present: bool = True, vid: VnetId = V2) -> TableChange:
    return TableChange(KERNEL_PEER, vid, b"", addr, present)


def from_b(c, mac=MAC_B, src=HOST_B, now=1.0, dst=ME):
    return c.receive_udp(data(V2, frame(MAC_A, mac)), src, dst, now)


# -- the tables report what changes ------------------------------------------------------

def test_nothing_is_recorded_without_a_mirror():
    c = make_core(ME, vnet=V2, ifname="vnif0002")
    from_b(c)
    c.receive_tap(V2, frame(BCAST, MAC_A), 1.0)
    assert c.table_changes is None and c.drain_table_changes() == []


def test_learned_moved_aged_and_flushed_remote_macs():
    c = mirrored()
    from_b(c, now=1.0)
    from_b(c, now=2.0)                       # a refresh is no change
    assert c.drain_table_changes() == [varp(MAC_B, HOST_B)]
    assert c.drain_table_changes() == []
    from_b(c, src=HOST_C, now=3.0)           # the domain moved to HOST_C
    assert c.drain_table_changes() == [varp(MAC_B, HOST_B, False), varp(MAC_B, HOST_C)]
    c.handle_timer(3.0 + 61.0 + 60.0)        # aged out at a sweep
    assert c.drain_table_changes() == [varp(MAC_B, HOST_C, False)]
    from_b(c, now=200.0)
    c.varp_flush()
    assert c.drain_table_changes() == [varp(MAC_B, HOST_B), varp(MAC_B, HOST_B, False)]


def test_a_lookup_that_misses_changes_nothing_the_kernel_holds():
    c = mirrored()
    c.receive_tap(V2, frame(MAC_B, MAC_A), 1.0)      # unknown unicast: INCOMPLETE entry
    assert c.drain_table_changes() == [vif(MAC_A)]
    from_b(c, now=2.0)                                # the lookup gives way to what B said
    assert c.drain_table_changes() == [varp(MAC_B, HOST_B)]


def test_a_domain_that_arrives_or_leaves_moves_between_the_tables():
    """design.md 8: a MAC learned elsewhere that appears on our TAP is ours now;
    one of ours learned from another host has left."""
    c = mirrored()
    from_b(c, now=1.0)
    c.drain_table_changes()
    c.receive_tap(V2, frame(BCAST, MAC_B), 2.0)      # MAC_B arrived here
    assert c.drain_table_changes() == [vif(MAC_B), varp(MAC_B, HOST_B, False)]
    c.receive_udp(data(V2, frame(MAC_A, MAC_B)), HOST_C, ME, 3.0)     # and left for C
    assert c.drain_table_changes() == [varp(MAC_B, HOST_C), vif(MAC_B, False)]


def test_vif_commands_sweeps_and_vnet_removal_are_reported():
    c = mirrored()
    assert c.vif_add(V2, MAC_A, 1.0)
    c.vif_del(V2, MAC_A)
    c.vif_add(V2, MAC_C, 1.0)
    from_b(c, now=1.0)
    assert c.drain_table_changes() == [vif(MAC_A), vif(MAC_A, False), vif(MAC_C),
                                       varp(MAC_B, HOST_B)]
    c.remove_vnet(V2)
    assert sorted(c.drain_table_changes()) == sorted([varp(MAC_B, HOST_B, False),
                                                      vif(MAC_C, False)])


def test_table_entries_is_what_the_tables_hold():
    c = mirrored()
    from_b(c, now=1.0)
    c.receive_tap(V2, frame(BCAST, MAC_A), 1.0)
    c.receive_tap(V2, frame(MAC_C, MAC_A), 1.0)      # INCOMPLETE: not listed
    c.receive_udp(encode_announce(V2.raw, MAC_B, HOST_B) + KERNEL_TRAILER, HOST_B, GROUP, 1.0)
    assert sorted(c.table_entries(V2)) == sorted([varp(MAC_B, HOST_B), vif(MAC_A),
                                                  kpeer(HOST_B)])


# -- what the kernel reports ---------------------------------------------------------------

def test_a_remote_the_kernel_saw_is_learned_and_kept_alive_by_its_reports():
    c = mirrored()
    assert c.kernel_remote_seen(V2, MAC_B, HOST_B, 1.0) == []
    assert c.varp.get(V2.raw, MAC_B).addr == HOST_B
    assert c.vnet(V2).counters.learned == 1 and c.counters.kernel_seen == 1
    for t in range(20, 200, 20):             # reported again now and then: never ages
        c.kernel_remote_seen(V2, MAC_B, HOST_B, float(t))
        c.handle_timer(float(t))
    assert c.varp.get(V2.raw, MAC_B) is not None
    assert c.drain_table_changes() == [varp(MAC_B, HOST_B)]
    c.handle_timer(400.0)                    # no longer reported: ages like any entry
    assert c.varp.get(V2.raw, MAC_B) is None
    assert c.drain_table_changes() == [varp(MAC_B, HOST_B, False)]
    assert consistent(c)


def test_a_local_domain_the_kernel_saw_is_recorded_and_announced_once():
    """A domain that arrives and sends only known unicast, which the kernel
    carries, is still noticed: one gratuitous announce (design.md 8), with
    the kernel bit, to the group and to every peer."""
    c = mirrored()
    c.peer_add("198.51.100.7")
    c.kernel_remote_seen(V2, MAC_A, HOST_B, 0.5)         # it lived on B before
    c.drain_table_changes()
    actions = c.kernel_local_seen(V2, MAC_A, 1.0)
    announce = encode_announce(V2.raw, MAC_A, ME) + KERNEL_TRAILER
    assert actions[0] == SendUdp(GROUP, announce)
    assert [a.dst_ip for a in actions] == [GROUP, "198.51.100.7"]
    assert c.vnet(V2).counters.announced == 1
    assert c.drain_table_changes() == [vif(MAC_A), varp(MAC_A, HOST_B, False)]
    assert c.kernel_local_seen(V2, MAC_A, 30.0) == []    # known: a refresh
    c.handle_timer(75.0)
    assert (V2.raw, MAC_A) in c.vifs                      # refreshed at 30 s


def test_entries_the_kernel_used_are_refreshed_never_made_or_moved():
    c = mirrored()
    c.kernel_remote_seen(V2, MAC_B, HOST_B, 1.0)
    c.kernel_local_seen(V2, MAC_A, 1.0)
    c.drain_table_changes()
    for t in range(40, 400, 40):             # used between the kernel path's readings
        assert c.kernel_used(varp(MAC_B, HOST_B), float(t))
        assert c.kernel_used(vif(MAC_A), float(t))
        c.handle_timer(float(t))
    assert c.varp.get(V2.raw, MAC_B).stamp == 360.0 and (V2.raw, MAC_A) in c.vifs
    assert c.counters.kernel_used == 18 and c.counters.kernel_seen == 2
    assert c.vnet(V2).counters.announced == 1 and c.drain_table_changes() == []
    # at another address than the core's, or gone: nothing is made or moved
    assert not c.kernel_used(varp(MAC_B, HOST_C), 400.0)
    assert not c.kernel_used(varp(MAC_C, HOST_B), 400.0)
    assert not c.kernel_used(vif(MAC_C), 400.0)
    assert not c.kernel_used(kpeer(HOST_B), 400.0)
    assert c.varp.get(V2.raw, MAC_B).addr == HOST_B and c.varp.get(V2.raw, MAC_C) is None
    assert (V2.raw, MAC_C) not in c.vifs and c.drain_table_changes() == []
    c.handle_timer(500.0)                    # no longer used: ages like any entry
    assert c.varp.get(V2.raw, MAC_B) is None and (V2.raw, MAC_A) not in c.vifs
    assert consistent(c)


def test_kernel_reports_are_bounded_like_learning():
    c = mirrored()
    c.set_limit(V2, "varp", 3)
    c.set_limit(V2, "vif", 2)
    for i in range(5):
        c.kernel_remote_seen(V2, bytes([2, 0, 0, 0, 0, i]), HOST_B, 1.0)
        c.kernel_local_seen(V2, bytes([2, 0, 0, 0, 1, i]), 1.0)
    assert len(c.varp) == 3 and len(c.vifs) == 2
    refused = c.vnet(V2).counters.refused
    assert refused == {"varp_vnet_full": 2, "vif_vnet_full": 3}
    # Per source too: one host claims at most its share of a vnet.
    c2 = mirrored()
    n = LIMITS["varp"].per_source + 10
    for i in range(n):
        c2.kernel_remote_seen(V2, i.to_bytes(6, "big"), HOST_B, 1.0)
    assert len(c2.varp) == LIMITS["varp"].per_source
    assert c2.vnet(V2).counters.refused == {"varp_source_full": 10}


def test_kernel_reports_never_teach_a_secured_or_unknown_vnet():
    c = make_core(ME, vnet=V97, security="auth", key=KEY1)
    c.add_vnet(V2, "vnif0002")
    c.mirror_tables()
    with pytest.raises(ValueError, match="secured"):
        c.set_kernel(V97, True)
    assert c.kernel_remote_seen(V97, MAC_B, HOST_B, 1.0) == []
    assert c.kernel_local_seen(V97, MAC_A, 1.0) == []
    assert c.kernel_remote_seen(VnetId.parse("5"), MAC_B, HOST_B, 1.0) == []
    assert c.kernel_remote_seen(V2, MAC_B, ME, 1.0) == []              # our own address
    assert c.kernel_remote_seen(V2, MAC_B, "224.10.0.9", 1.0) == []    # not a host
    assert c.kernel_local_seen(V2, b"\x01" + MAC_A[1:], 1.0) == []     # a group MAC
    assert len(c.varp) == len(c.vifs) == 0 and c.drain_table_changes() == []
    assert c.counters.kernel_ignored == {"secured": 2, "unknown_vnet": 1, "bad_address": 2,
                                         "group_source": 1}
    assert c.counters.kernel_seen == 0


# -- which engines decapsulate a vnet in their kernel --------------------------------------

def test_our_announces_say_the_kernel_path_carries_the_vnet():
    for offload, kernel, bits in ((False, False, 0), (True, False, segments.CAP_SEGMENTS),
                                  (False, True, segments.CAP_KERNEL),
                                  (True, True, segments.CAP_SEGMENTS | segments.CAP_KERNEL)):
        c = mirrored(offload=offload, kernel=kernel)
        announce = c.receive_tap(V2, frame(BCAST, MAC_A), 1.0)[0]
        # Without either, the legacy bytes exactly (protocol.md 3.2).
        assert announce.payload == encode_announce(V2.raw, MAC_A, ME) + segments.trailer(bits)
    c = mirrored()
    c.set_kernel(V2, False)
    announce = c.receive_tap(V2, frame(BCAST, MAC_A), 1.0)[0]
    assert announce.payload == encode_announce(V2.raw, MAC_A, ME)


def test_kernel_peers_come_and_go_with_the_bit_of_their_announces():
    c = mirrored()
    assert not c.kernel_peer(V2, HOST_B, 1.0)
    c.receive_udp(encode_announce(V2.raw, MAC_B, HOST_B) + KERNEL_TRAILER, HOST_B, GROUP, 1.0)
    assert c.kernel_peer(V2, HOST_B, 1.0)
    assert c.drain_table_changes() == [varp(MAC_B, HOST_B), kpeer(HOST_B)]
    # Its engine came back with the kernel path off: it announces without the bit.
    c.receive_udp(encode_announce(V2.raw, MAC_C, HOST_B) + segments.CAP_TRAILER, HOST_B,
                  GROUP, 2.0)
    assert not c.kernel_peer(V2, HOST_B, 2.0)
    assert c.drain_table_changes() == [varp(MAC_C, HOST_B), kpeer(HOST_B, False)]
    # Heard once and never again: gone after CAP_TTL, at a sweep.
    c.receive_udp(encode_announce(V2.raw, MAC_B, HOST_B) + KERNEL_TRAILER, HOST_B, GROUP, 3.0)
    assert not c.kernel_peer(V2, HOST_B, 3.0 + CAP_TTL)
    c.handle_timer(3.0 + CAP_TTL + 61.0)
    assert kpeer(HOST_B, False) in c.drain_table_changes()
    assert consistent(c)


def test_kernel_peers_are_recorded_only_on_vnets_the_kernel_path_carries():
    c = mirrored(kernel=False)
    c.receive_udp(encode_announce(V2.raw, MAC_B, HOST_B) + KERNEL_TRAILER, HOST_B, GROUP, 1.0)
    assert not c.kernel_peer(V2, HOST_B, 1.0) and len(c.kernel_peers) == 0


def test_kernel_peers_are_bounded_per_source():
    c = mirrored()
    for i in range(10):
        c.receive_udp(encode_announce(V2.raw, MAC_B, f"10.0.0.{i + 1}") + KERNEL_TRAILER,
                      HOST_B, GROUP, 1.0)
    assert len(c.kernel_peers) == LIMITS["kernel_peers"].per_source
    assert c.vnet(V2).counters.refused["kernel_peers_source_full"] == \
        10 - LIMITS["kernel_peers"].per_source


def test_a_sender_of_unknown_kernel_path_is_probed_once_a_minute():
    c = mirrored()
    c.receive_tap(V2, frame(BCAST, MAC_A), 0.0)               # a domain of ours
    probe = SendUdp(HOST_B, encode_announce(V2.raw, MAC_A, ME) + KERNEL_PROBE)
    assert probe in from_b(c, now=1.0)                        # a datagram through user space
    assert probe not in c.kernel_remote_seen(V2, MAC_C, HOST_B, 2.0)     # asked already
    assert probe in c.kernel_remote_seen(V2, MAC_C, HOST_B, 1.0 + CAP_REFRESH)
    assert c.counters.kernel_probes == 2
    # Its answer says so: no more probes until that is CAP_REFRESH old, well
    # before it runs out (CAP_TTL).
    c.receive_udp(encode_announce(V2.raw, MAC_B, HOST_B) + KERNEL_TRAILER, HOST_B, ME, 70.0)
    assert c.kernel_peer(V2, HOST_B, 70.0)
    assert probe not in c.kernel_remote_seen(V2, MAC_B, HOST_B, 70.0 + CAP_REFRESH - 1)
    assert probe in c.kernel_remote_seen(V2, MAC_B, HOST_B, 70.0 + CAP_REFRESH + 1)
    assert CAP_REFRESH < CAP_TTL
    # Without a domain of ours there, nothing true to announce: no probe.
    bare = mirrored()
    assert not any(isinstance(a, SendUdp) for a in from_b(bare, now=1.0))
    assert bare.counters.kernel_probes == 0
    # Nor on a vnet the kernel path does not carry.
    off = mirrored(kernel=False)
    off.receive_tap(V2, frame(BCAST, MAC_A), 0.0)
    assert not any(isinstance(a, SendUdp) for a in from_b(off, now=1.0))


def test_a_kernel_probe_is_answered_by_an_engine_with_the_kernel_path_only():
    probe = encode_announce(V2.raw, MAC_B, HOST_B) + KERNEL_PROBE
    for offload, kernel, answer_bits in ((False, True, segments.CAP_KERNEL),
                                         (True, True, segments.CAP_SEGMENTS | segments.CAP_KERNEL),
                                         (True, False, segments.CAP_SEGMENTS),
                                         (False, False, None)):
        c = mirrored(offload=offload, kernel=kernel)
        c.receive_tap(V2, frame(BCAST, MAC_A), 0.0)
        got = c.receive_udp(probe, HOST_B, ME, 1.0)
        if answer_bits is None:
            assert got == []        # a legacy-like engine says nothing
        else:
            answer = encode_announce(V2.raw, MAC_A, ME) + segments.trailer(answer_bits)
            assert got == [SendUdp(HOST_B, answer)]
            assert not segments.asks_answer(answer)       # the exchange ends there


def test_a_varp_request_still_gets_the_legacy_reply():
    c = mirrored(offload=True)
    c.receive_tap(V2, frame(BCAST, MAC_A), 0.0)
    request = VarpHeader(VARP_REQUEST, V2.raw, MAC_A).encode()
    assert c.receive_udp(request, HOST_B, ME, 1.0) == [
        SendUdp(HOST_B, encode_announce(V2.raw, MAC_A, ME))]


def test_adopted_entries_seed_the_tables():
    c = mirrored()
    assert c.kernel_adopt(V2, MAC_B, HOST_B, True, 1.0) == []
    assert c.kernel_peer(V2, HOST_B, 1.0) and c.varp.get(V2.raw, MAC_B).addr == HOST_B
    c.kernel_adopt(V2, MAC_C, HOST_C, False, 1.0)
    assert not c.kernel_peer(V2, HOST_C, 1.0)
    assert sorted(c.drain_table_changes()) == sorted([kpeer(HOST_B), varp(MAC_B, HOST_B),
                                                      varp(MAC_C, HOST_C)])
