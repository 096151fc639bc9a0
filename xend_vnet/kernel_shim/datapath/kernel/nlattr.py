"""Netlink attributes walked by hand, for the few messages the kernel path
reads without pyroute2 (a filter's program id in tc.py, bridge fdb
notifications in fdb.py): pyroute2 does not decode the first, and the
second come on a non-blocking socket of our own."""

from __future__ import annotations

import struct
from collections.abc import Iterator

NLA_TYPE_MASK = 0x3FFF          # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
_NLA = struct.Struct("=HH")     # nla_len, nla_type


def attributes(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, value) of each attribute in ``data``; stops at the first one
    that is cut short or claims more than is there."""
    off = 0
    while off + _NLA.size <= len(data):
        length, kind = _NLA.unpack_from(data, off)
        if length < _NLA.size or off + length > len(data):
            return
        yield kind & NLA_TYPE_MASK, data[off + _NLA.size:off + length]
        off += (length + 3) & ~3
