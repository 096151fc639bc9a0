"""Property tests: arbitrary bytes from the network never escape the engine
as an exception; each datagram is accepted or dropped under a counted reason."""

from core_helpers import consistent, make_core
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xend_vnet.kernel_shim.wire import codec
from xend_vnet.kernel_shim.wire.codec import DecodeError, VarpHeader
from xend_vnet.kernel_shim.core.engine import EngineCore
from xend_vnet.vnet_id import VnetId

V97 = VnetId.parse("97")
PEER = "198.51.100.7"
SOURCES = st.sampled_from(["192.0.2.2", PEER, "192.0.2.1", "0.0.0.0"])
DESTS = st.sampled_from(["224.10.0.1", "192.0.2.1", "224.10.0.2", "255.255.255.255"])

# Valid prefixes reach the deeper paths; random tails do the rest.
PREFIXES = st.sampled_from([
    b"", b"\x00\x01\x00\x01", b"\x00\x01\x00\x02" + V97.raw, b"\x00\x02\x00\x00\x00\x40",
    b"\x00\x02\x00\x00\x00\x40" + V97.raw, b"\x00\x03\x00\x00",
    b"\x00\x03\x00\x00" + codec.inner_udp_packet(b"", "224.10.0.1")[:28],
    b"\x00\x04\x00\x00",
])
PAYLOADS = st.one_of(st.binary(max_size=200), st.builds(lambda p, t: p + t, PREFIXES,
                                                         st.binary(max_size=120)))


def fuzz_core() -> EngineCore:
    core = make_core("192.0.2.1", PEER)
    core.vif_add(V97, bytes.fromhex("aa0000000001"), 0)
    return core


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(PAYLOADS, SOURCES, DESTS), min_size=1, max_size=8))
def test_receive_udp_never_raises_and_counts_everything(datagrams):
    core = fuzz_core()
    for i, (payload, src, dst) in enumerate(datagrams):
        actions = core.receive_udp(payload, src, dst, float(i))
        assert isinstance(actions, list)
    c = core.counters
    assert c.rx_datagrams == len(datagrams)
    assert consistent(core)
    assert all(n > 0 for n in c.rx_dropped.values())


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_receive_tap_never_raises(frame):
    core = fuzz_core()
    actions = core.receive_tap(V97, frame, 1.0)
    vc = core.vnet(V97).counters
    assert vc.tx_packets + sum(vc.dropped.values()) == 1
    assert all(codec.msg_id(a.payload) in (1, 2, 3) for a in actions)


@given(st.binary(max_size=120))
def test_decoders_raise_only_decode_error(data):
    for decode in (codec.decode_data, VarpHeader.decode, codec.decode_vfwd, codec.msg_id):
        try:
            decode(data)
        except DecodeError as e:
            assert e.reason and e.reason.replace("_", "").isalpha()


@given(st.binary(min_size=16, max_size=16), st.binary(min_size=14, max_size=300))
def test_data_round_trip(vid, frame):
    assert codec.decode_data(codec.DATA_PREFIX + vid + frame) == (vid, frame)


@given(st.integers(0, 0xFFFF), st.binary(min_size=16, max_size=16),
       st.binary(min_size=6, max_size=6), st.integers(0, 255),
       st.binary(min_size=16, max_size=16))
def test_varp_round_trip(opcode, vnet, vmac, family, addr):
    h = VarpHeader(opcode, vnet, vmac, family, addr)
    assert len(h.encode()) == 43
    assert VarpHeader.decode(h.encode()) == h


@given(st.binary(max_size=300), st.ip_addresses(v=4), st.ip_addresses(v=4))
def test_vfwd_round_trip(payload, src, dst):
    inner = codec.decode_vfwd(codec.encode_vfwd(codec.inner_udp_packet(
        payload, str(dst), src=str(src))))
    assert inner == (str(src), str(dst), 17, 1798, 1798, payload)
