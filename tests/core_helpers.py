"""Sans-IO helpers for the engine core's tests: frames, data messages, a core
ready to drive, and the counters' invariant (core/counters.py)."""

from __future__ import annotations

from collections.abc import Mapping

from xend_vnet.kernel_shim.core.engine import CoreOptions, EngineCore
from xend_vnet.kernel_shim.security.keystore import SecurityContext
from xend_vnet.kernel_shim.wire import codec
from xend_vnet.vnet_id import VnetId

ME = "192.0.2.1"
V97 = VnetId.parse("97")


def frame(dst: bytes, src: bytes, payload: bytes = b"x" * 46,
          ethertype: bytes = b"\x08\x00") -> bytes:
    """An Ethernet frame: IPv4 and a minimum-size payload unless told."""
    return dst + src + ethertype + payload


def data(vid: VnetId, fr: bytes) -> bytes:
    """The data message (etherip in UDP) that carries ``fr`` in ``vid``."""
    return codec.DATA_PREFIX + vid.raw + fr


def make_core(me: str = ME, *peers: str, vnet: VnetId | None = V97,
              ifname: str = "vnif0097", security: str = "none", key: bytes | None = None,
              context: SecurityContext | None = None, **options) -> EngineCore:
    """A core whose own address is ``me``, with ``vnet`` (none if None) and
    ``peers``; ``options`` are CoreOptions, ``context`` the security one."""
    core = EngineCore(CoreOptions(**options), context)
    core.own_addresses = {me}
    core.self_address = me
    if vnet is not None:
        core.add_vnet(vnet, ifname, security, key)
    for p in peers:
        core.peer_add(p)
    return core


def consistent(core: EngineCore) -> bool:
    """Every datagram the core took ended in exactly one outcome (core/counters.py)."""
    c = core.counters
    return balanced({**dict(c.fields()), "rx_dropped": c.rx_dropped})


def balanced(counters: Mapping) -> bool:
    """The invariant of core/counters.py on the engine's counters, as numbers or as
    ``(vnet.stats)`` shows them: ``rx_datagrams == rx_data + rx_varp + rx_fast +
    sum(rx_dropped)``: data, VARP, fast framing, or dropped under one reason."""
    dropped = sum(int(n) for n in counters.get("rx_dropped", {}).values())
    return int(counters["rx_datagrams"]) == (int(counters["rx_data"]) + int(counters["rx_varp"])
                                             + int(counters["rx_fast"]) + dropped)
