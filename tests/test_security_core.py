"""Secured vnets in the sans-IO core (design.md 7): nonces, learning, attacks,
epochs, rotation.  Cores get injected sender ids, wall clocks and epochs."""

from __future__ import annotations

import socket

import pytest
from core_helpers import consistent, frame
from hypothesis import given, settings
from hypothesis import strategies as st
from security_helpers import (
    KEY1,
    KEY2,
    MAC_A,
    MAC_B,
    V97,
    Clock,
    context,
    delivered,
    secured_core,
    sent,
)

from xend_vnet.kernel_shim.wire import codec
from xend_vnet.kernel_shim.control import listing
from xend_vnet.kernel_shim.core.engine import CoreOptions, EngineCore
from xend_vnet.kernel_shim.security import keys
from xend_vnet.vnet_id import VnetId
from xend_vnet.kernel_shim.security.secure_codec import (
    HEADER_LEN,
    ICV_LEN,
    decode_header,
)

A, B, GROUP = "192.0.2.1", "192.0.2.2", codec.VARP_MCADDR
BCAST = b"\xff" * 6
SECRET = b"the inner payload nobody may read"


def pair(level="conf", **kw):
    clock = Clock()
    a = secured_core(A, 0xA, clock, level, **kw)
    b = secured_core(B, 0xB, clock, level, **kw)
    return clock, a, b


def flood(core, now=1.0, body=SECRET, src=MAC_A):
    """A broadcast off the TAP: the secured datagram sent to the group."""
    (out,) = [s for s in sent(core.receive_tap(V97, frame(BCAST, src, body), now))
              if s.dst_ip == GROUP][-1:]
    return out.payload


def first(core, now=1.0):
    """The first datagram a fresh MAC causes: its gratuitous announce, sequence 1."""
    return sent(core.receive_tap(V97, frame(BCAST, MAC_A), now))[0].payload


def drops(core):
    return dict(core.counters.rx_dropped)


@pytest.mark.parametrize("level", ["auth", "conf"])
def test_round_trip_and_learning_from_the_authenticated_care_of(level):
    _, a, b = pair(level)
    wire = flood(a)
    assert wire[:2] == b"\x00\x04" and wire[2:4] == (b"\x00\x01" if level == "auth"
                                                       else b"\x00\x02")
    # The outer source is a NAT's: the care-of in the header is what is learned.
    out = b.receive_udp(wire, "203.0.113.9", GROUP, 1.0)
    assert delivered(out) == [frame(BCAST, MAC_A, SECRET)]
    assert b.varp.resolve(V97.raw, MAC_A, 1.0) == A
    assert b.vnet(V97).counters.rx_packets == 1 and consistent(b)


def test_conf_hides_the_frame_auth_shows_it():
    _, a, _ = pair("conf")
    assert SECRET not in flood(a) and MAC_A not in flood(a)
    _, a, _ = pair("auth")
    assert frame(BCAST, MAC_A, SECRET) in flood(a)


def test_unicast_after_learning_goes_to_the_care_of():
    _, a, b = pair()
    b.receive_udp(flood(a), A, GROUP, 1.0)
    (out,) = [s for s in sent(b.receive_tap(V97, frame(MAC_A, MAC_B), 1.1))
              if s.dst_ip != GROUP]
    assert out.dst_ip == A
    assert delivered(a.receive_udp(out.payload, B, A, 1.1)) == [frame(MAC_A, MAC_B)]


def test_two_senders_same_key_same_first_seq_never_share_key_and_nonce():
    clock = Clock()
    a = secured_core(A, 0xA, clock)
    c = secured_core("192.0.2.3", 0xC, clock)    # same key, same wall clock
    ha, hc = decode_header(first(a)), decode_header(first(c))
    assert ha.seq == hc.seq == 1 and ha.epoch == hc.epoch
    group = keys.group_key(KEY1, V97.raw, keys.generation(KEY1, V97.raw))
    ka = keys.traffic_key(group, ha.suite, ha.sender, ha.epoch)
    kc = keys.traffic_key(group, hc.suite, hc.sender, hc.epoch)
    assert (ka, ha.seq) != (kc, hc.seq) and ka != kc


def test_sender_restart_never_reuses_a_nonce_even_if_the_clock_steps_back():
    clock = Clock()
    saved: list[int] = []
    a = secured_core(A, 0xA, clock, saved=saved)
    one = decode_header(first(a))
    assert saved == [one.epoch]                   # persisted before use
    clock.ns -= 3600 * 10**9                      # the wall clock went back an hour
    # Worst case: the same sender id after the restart, only the saved epoch.
    again = secured_core(A, 0xA, clock, last=saved[-1])
    two = decode_header(first(again))
    assert two.seq == 1 and two.epoch > one.epoch


def test_new_epoch_after_the_lifetime_accepted_fresh():
    clock, a, b = pair(lifetime=600.0)
    one = decode_header(flood(a, now=1.0))
    b.receive_udp(flood(a, now=2.0), A, GROUP, 2.0)
    clock.ns += 601 * 10**9
    wire = flood(a, now=603.0)
    h = decode_header(wire)
    assert h.epoch > one.epoch and h.seq == 1
    assert delivered(b.receive_udp(wire, A, GROUP, 603.0))
    assert a.vnet(V97).keys.epochs_started == 2


def test_host_with_the_vnet_id_but_no_key_gets_nothing_through():
    _, a, b = pair()
    intruder = EngineCore(CoreOptions())
    intruder.self_address = "192.0.2.66"
    intruder.add_vnet(V97, "vnif0097")                 # security none
    for out in sent(intruder.receive_tap(V97, frame(BCAST, bytes.fromhex("aa00000000ee")),
                                         1.0)):
        assert b.receive_udp(out.payload, "192.0.2.66", GROUP, 1.0) == []
    # A static neighbour entry: clear unicast straight at b.
    clear = codec.DATA_PREFIX + V97.raw + frame(MAC_B, bytes.fromhex("aa00000000ee"))
    assert b.receive_udp(clear, "192.0.2.66", B, 1.0) == []
    assert drops(b)["clear_on_secured"] >= 3           # announce, flood, unicast
    # A clear VARP request for b's vif is not answered either.
    b.vif_add(V97, MAC_B, 1.0)
    request = codec.VarpHeader(codec.VARP_REQUEST, V97.raw, MAC_B).encode()
    assert b.receive_udp(request, "192.0.2.66", GROUP, 1.0) == []
    assert len(b.varp) == 0 and consistent(b)


def test_forged_secured_packets_dropped():
    _, a, b = pair()
    wire = flood(a)
    spi = wire[4:8]
    forged = [
        b"\x00\x04\x00\x02" + spi + bytes(100),                         # zeros
        b"\x00\x04\x00\x02" + spi + wire[8:-ICV_LEN] + bytes(ICV_LEN),   # no tag
        b"\x00\x04\x00\x02" + b"\x12\x34\x56\x78" + wire[8:],           # unknown SPI
        b"\x00\x04\x00\x01" + wire[4:],                                  # suite changed
        wire[:HEADER_LEN + 3],                                           # truncated
    ]
    for p in forged:
        assert b.receive_udp(p, "192.0.2.66", GROUP, 1.0) == []
    d = drops(b)
    assert d["epoch_expired"] == 1 and d["bad_icv"] == 1 and d["unknown_spi"] == 1
    assert d["secure_bad_suite"] == 1
    assert d["secure_truncated"] == 1 and len(b.varp) == 0
    # None of it moved the window: the genuine packet still gets through.
    assert delivered(b.receive_udp(wire, A, GROUP, 1.0))


def test_every_flipped_bit_is_dropped():
    _, a, b = pair("auth")
    wire = flood(a, body=b"x")
    for i in range(len(wire) * 8):
        bad = bytearray(wire)
        bad[i // 8] ^= 1 << (i % 8)
        assert b.receive_udp(bytes(bad), A, GROUP, 1.0) == [], i
    assert len(b.varp) == 0 and b.counters.rx_data == 0 and consistent(b)
    assert delivered(b.receive_udp(wire, A, GROUP, 1.0))


def test_altered_care_of_fails_the_icv():
    _, a, b = pair()
    wire = bytearray(flood(a))
    wire[32:36] = socket.inet_aton("192.0.2.66")
    assert b.receive_udp(bytes(wire), A, GROUP, 1.0) == []
    assert drops(b) == {"bad_icv": 1} and len(b.varp) == 0


def test_replays_refused_whatever_the_outer_source():
    _, a, b = pair()
    wire = flood(a)
    assert delivered(b.receive_udp(wire, A, GROUP, 1.0))
    assert b.receive_udp(wire, A, GROUP, 1.1) == []
    assert b.receive_udp(wire, "192.0.2.66", B, 1.2) == []
    assert drops(b) == {"replay": 2}


def test_old_epoch_refused_after_the_sender_restarted():
    clock, a, b = pair()
    saved: list[int] = []
    a = secured_core(A, 0xA, clock, saved=saved)
    captured = [flood(a, now=1.0) for _ in range(3)]
    b.receive_udp(captured[0], A, GROUP, 1.0)
    clock.ns += 10**9
    restarted = secured_core(A, 0xA, clock, last=saved[-1])
    assert delivered(b.receive_udp(flood(restarted, now=2.0), A, GROUP, 2.0))
    for p in captured[1:]:
        assert b.receive_udp(p, A, GROUP, 2.1) == []
    assert drops(b) == {"epoch_old": 2}


def test_receiver_restart_refuses_epochs_past_the_age():
    clock, a, _ = pair()
    captured = flood(a)
    clock.ns += 901 * 10**9
    fresh = secured_core(B, 0xB, clock)
    assert fresh.receive_udp(captured, A, GROUP, 1.0) == []
    assert drops(fresh) == {"epoch_expired": 1}


def test_own_secured_packets_ignored_even_when_relayed():
    _, a, _ = pair()
    wire = flood(a)
    assert a.receive_udp(wire, "192.0.2.7", GROUP, 1.0) == []
    assert drops(a) == {"own_packet": 1}


def test_vfwd_carries_secured_packets_unchanged():
    _, a, b = pair()
    wire = flood(a)
    b.peer_add("198.51.100.1")
    vfwd = codec.encode_vfwd(codec.inner_udp_packet(wire, GROUP, 1798, A))
    out = b.receive_udp(vfwd, "198.51.100.1", B, 1.0)
    assert delivered(out) == [frame(BCAST, MAC_A, SECRET)]


def test_gratuitous_announce_is_secured_and_learned():
    _, a, b = pair()
    out = sent(a.receive_tap(V97, frame(MAC_B, MAC_A), 1.0))
    announce = [o.payload for o in out if o.dst_ip == GROUP][0]
    assert announce[:2] == b"\x00\x04"
    assert b.receive_udp(announce, A, GROUP, 1.0) == []
    assert b.varp.resolve(V97.raw, MAC_A, 1.0) == A and b.counters.rx_varp == 1


def test_no_care_of_address_no_secured_send():
    _, a, _ = pair()
    a.self_address = None
    assert a.receive_tap(V97, frame(BCAST, MAC_A), 1.0) == []
    assert a.vnet(V97).counters.dropped == {"no_self_address": 1}


def test_rotation_in_three_steps_without_loss():
    _, a, b = pair()
    gen1 = keys.generation(KEY1, V97.raw)

    def ab(now):
        return delivered(b.receive_udp(flood(a, now), A, GROUP, now))

    def ba(now):
        return delivered(a.receive_udp(flood(b, now, src=MAC_B), B, GROUP, now))

    assert ab(1.0) and ba(1.0)
    gen2 = a.key_add(V97, KEY2)
    assert ab(2.0) and ba(2.0)
    assert b.key_add(V97, KEY2) == gen2 != gen1          # same number on every host
    a.key_activate(V97, gen2)
    assert decode_header(flood(a, 3.0)).spi == keys.spi(KEY2, V97.raw, gen2)
    assert ab(3.0) and ba(3.0)
    b.key_activate(V97, gen2)
    assert ab(4.0) and ba(4.0)
    a.key_retire(V97, gen1)
    b.key_retire(V97, gen1)
    assert ab(5.0) and ba(5.0)
    states = {g: s for g, s, _ in a.vnet(V97).keys.listing()}
    assert states == {gen1: "retired", gen2: "active"}
    assert not any(drops(x) for x in (a, b))


def test_retired_generation_refused_and_active_cannot_be_retired():
    _, a, b = pair()
    gen1 = keys.generation(KEY1, V97.raw)
    old = flood(a)
    gen2 = b.key_add(V97, KEY2)
    with pytest.raises(ValueError):
        b.key_retire(V97, gen1)
    b.key_activate(V97, gen2)
    b.key_retire(V97, gen1)
    assert b.receive_udp(old, A, GROUP, 1.0) == []
    assert drops(b) == {"unknown_spi": 1}
    with pytest.raises(KeyError):
        b.key_activate(V97, gen1)
    with pytest.raises(KeyError):
        b.key_add(V97, KEY2)                      # already there
    assert b.key_add(V97, KEY1) == gen1           # a retired key may come back


def test_secured_vnet_needs_a_key_and_none_takes_none():
    core = EngineCore(CoreOptions(), context(1, Clock()))
    with pytest.raises(ValueError):
        core.add_vnet(V97, "vnif0097", "conf")
    with pytest.raises(ValueError):
        core.add_vnet(V97, "vnif0097", "none", KEY1)
    core.add_vnet(V97, "vnif0097")
    with pytest.raises(ValueError):
        core.key_add(V97, KEY1)


def test_spi_collision_refused(monkeypatch):
    core = EngineCore(CoreOptions(), context(1, Clock()))
    core.add_vnet(V97, "vnif0097", "auth", KEY1)
    monkeypatch.setattr(keys, "spi", lambda *a: core.vnet(V97).keys.listing()[0][2])
    with pytest.raises(ValueError, match="SPI"):
        core.add_vnet(VnetId.parse("98"), "vnif0098", "auth", KEY2)
    assert not core.has_vnet(VnetId.parse("98"))


def test_listings_show_generations_never_key_material():
    clock, a, _ = pair()
    a.key_add(V97, KEY2)
    text = listing.vnet_list(a) + listing.key_list(a.vnet(V97))
    g = a.vnet(V97).keys.generations
    secrets = [KEY1.hex(), KEY2.hex()] + [x.group.hex() for x in g.values()]
    assert not any(s in text or s.upper() in text for s in secrets)
    gen1 = keys.generation(KEY1, V97.raw)
    assert "(security conf) (data-path vnetd) (header 116) (keys (gen " in text
    assert f"(gen {gen1} active)" in text
    assert "(state added)" in text and "(suite aes-128-gcm)" in text


def test_removing_a_vnet_frees_its_spis():
    _, a, b = pair()
    wire = flood(a)
    b.remove_vnet(V97)
    assert b.receive_udp(wire, A, GROUP, 1.0) == []
    assert drops(b) == {"unknown_spi": 1}
    b.add_vnet(V97, "vnif0097", "conf", KEY1)
    assert delivered(b.receive_udp(flood(a), A, GROUP, 1.0))


def test_sweep_forgets_senders_past_the_age():
    clock, a, b = pair()
    b.receive_udp(flood(a), A, GROUP, 1.0)
    g = next(iter(b.vnet(V97).keys.generations.values()))
    assert g.peers
    clock.ns += 901 * 10**9
    b.vnet(V97).keys.sweep()
    assert not g.peers


@given(st.binary(max_size=200), st.sampled_from([b"\x00\x01", b"\x00\x02", b"\x00\x07"]))
@settings(max_examples=300)
def test_arbitrary_secured_bytes_are_counted_drops(body, suite):
    _, a, b = pair()
    spi = flood(a)[4:8]
    for payload in (b"\x00\x04" + suite + spi + body, b"\x00\x04" + suite + body):
        assert b.receive_udp(payload, "192.0.2.66", GROUP, 1.0) == []
    assert consistent(b) and len(b.varp) == 0 and b.counters.rx_data == 0


def test_epochs_from_the_future_are_refused():
    """Past the age limit ahead of the receiver's clock an epoch would never
    expire, so its packets could be replayed after every receiver restart."""
    clock, a, b = pair()
    wire = flood(a, now=1.0)
    clock.ns -= 901 * 10**9        # the receiver's clock is 901 s behind the sender's
    assert not delivered(b.receive_udp(wire, A, GROUP, 1.0))
    assert drops(b).get("epoch_future") == 1


def test_a_persisted_epoch_ahead_of_the_clock_is_reported_not_discarded():
    clock = Clock()
    ctx = context(0xA, clock, last=clock.ns + 1000 * 10**9)
    assert ctx.epoch_ahead_of_clock() == pytest.approx(1000.0)
    assert ctx.epochs.next() > clock.ns + 1000 * 10**9    # epochs never go back


def test_an_authenticated_care_of_that_no_host_can_have_is_refused():
    clock = Clock()
    a = secured_core("127.0.0.1", 0xA, clock)    # a misconfigured --address
    b = secured_core(B, 0xB, clock)
    assert not delivered(b.receive_udp(flood(a), A, GROUP, 1.0))
    assert drops(b).get("secure_bad_care_of") == 1
