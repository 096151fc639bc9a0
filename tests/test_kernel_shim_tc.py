"""Which tc filters the kernel data path calls its own, and reading filter
messages (datapath/kernel/tc.py), without a kernel."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xend_vnet.kernel_shim.datapath.kernel import tc


def nla(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def filter_msg(kind="bpf", name="xend-vnet:decap", prog_id=42, prio=1798, handle=1798,
               ifindex=3, parent=tc.INGRESS) -> bytes:
    opts = nla(tc.TCA_BPF_NAME, name.encode() + b"\0") + nla(tc.TCA_BPF_ID,
                                                            struct.pack("=I", prog_id))
    attrs = nla(tc.TCA_KIND, kind.encode() + b"\0") + nla(tc.TCA_OPTIONS | 0x8000, opts)
    body = struct.pack("=B3xiIII", 0, ifindex, handle, parent, (prio << 16) | 0x0300) + attrs
    return struct.pack("=IHHII", 16 + len(body), 44, 2, 1, 0) + body


def test_names_and_ownership():
    assert tc.filter_name("encap") == "xend-vnet:encap"
    assert tc.filter_name("decap") == "xend-vnet:decap"
    with pytest.raises(ValueError):
        tc.filter_name("other")
    assert tc.is_ours("bpf", "xend-vnet:encap")
    assert not tc.is_ours("bpf", "cilium")
    assert not tc.is_ours("u32", "xend-vnet:encap")
    assert not tc.is_ours("bpf", "")
    assert tc.role_of("xend-vnet:decap") == "decap"
    assert tc.role_of("xend-vnet:something-later") is None
    assert tc.role_of("vnet") is None


def test_parse_our_filter():
    info = tc.parse_filter(filter_msg())
    assert info == tc.FilterInfo(3, tc.INGRESS, 1798, 1798, "bpf", "xend-vnet:decap", 42)
    assert info.ours and info.role == "decap"


def test_parse_another_filter_is_not_ours():
    info = tc.parse_filter(filter_msg(name="somebody-else", prio=1))
    assert info.kind == "bpf" and not info.ours and info.role is None


def test_hooks_are_clsact_ingress_and_egress():
    # TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS / TC_H_MIN_EGRESS)
    assert (tc.INGRESS, tc.EGRESS) == (0xFFFFFFF2, 0xFFFFFFF3)


@given(st.binary(max_size=200))
def test_parse_never_crashes(raw):
    info = tc.parse_filter(raw)
    assert info is None or isinstance(info, tc.FilterInfo)


@given(st.integers(0, len(filter_msg())))
def test_truncated_messages_never_crash(n):
    info = tc.parse_filter(filter_msg()[:n])
    assert info is None or isinstance(info, tc.FilterInfo)
