"""Vnet ids (design.md 4, protocol.md 1): forms, canonical text, bad input."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xend_vnet.vnet_id import VnetId, VnetIdError, parse_usable

C97 = "0000:0000:0000:0000:0000:0000:0000:0097"


@pytest.mark.parametrize("text", ["97", "0097", "0:0:0:0:0:0:0:97", C97, " 97 ",
                                  "::::::0:97", "0:0:0:0:0:0:0:0097"])
def test_same_vnet_in_every_form(text):
    vid = VnetId.parse(text)
    assert vid.canonical == C97
    assert vid.dbid == C97.replace(":", "-")
    assert vid == VnetId.parse("97")


def test_fields_and_names():
    vid = VnetId.parse("1:2:3:4:5:6:7:abcd")
    assert vid.canonical == "0001:0002:0003:0004:0005:0006:0007:abcd"
    assert vid.fields == (1, 2, 3, 4, 5, 6, 7, 0xABCD)
    assert vid.last_field == 0xABCD
    assert vid.default_vnetif == "vnifabcd"
    assert not vid.short
    assert VnetId.parse("ABCD").canonical.endswith(":abcd")
    assert str(VnetId.parse("97")) == C97
    assert VnetId.parse("97").short


def test_wire_bytes_big_endian():
    assert VnetId.parse("97").raw == b"\x00" * 14 + b"\x00\x97"
    assert VnetId((0x97).to_bytes(16, "big")) == VnetId.parse("97")


def test_ordering_is_by_value():
    ids = [VnetId.parse(t) for t in ("1:0:0:0:0:0:0:0", "ff", "2")]
    assert [v.canonical[-4:] for v in sorted(ids)] == ["0002", "00ff", "0000"]


@pytest.mark.parametrize("text, reason", [
    ("", "empty"),
    ("   ", "empty"),
    ("12345", "short form is 1 to 4 hex digits"),
    ("xyz", "not 0 to 4 hex digits"),
    ("1:2", "2 colon-separated fields"),
    ("1:2:3:4:5:6:7:8:9", "9 colon-separated fields"),
    ("0:0:0:0:0:0:0:10000", "not 0 to 4 hex digits"),
    ("0:0:0:0:0:0:0:-1", "not 0 to 4 hex digits"),
])
def test_invalid_forms_quote_the_text(text, reason):
    with pytest.raises(VnetIdError) as info:
        VnetId.parse(text)
    assert reason in str(info.value)
    assert repr(text) in str(info.value)


def test_non_text_is_refused():
    with pytest.raises(VnetIdError):
        VnetId.parse(97)


@pytest.mark.parametrize("text, reason", [("0", "id 0 is not a vnet"),
                                          ("0:0:0:0:0:0:0:0", "id 0"),
                                          ("1", "reserved"), ("0001", "reserved")])
def test_unusable_ids(text, reason):
    VnetId.parse(text)
    with pytest.raises(VnetIdError, match=reason):
        parse_usable(text)


@given(st.integers(min_value=0, max_value=2**128 - 1))
def test_canonical_round_trip(n):
    vid = VnetId(n.to_bytes(16, "big"))
    assert VnetId.parse(vid.canonical) == vid
    assert len(vid.canonical) == 39


@given(st.text(max_size=50))
def test_arbitrary_text_parses_or_raises_vnet_id_error(text):
    try:
        VnetId.parse(text)
    except VnetIdError:
        pass
