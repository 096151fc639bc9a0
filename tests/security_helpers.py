"""Sans-IO fixtures for the secured-vnet tests: cores with injected sender
ids, wall clocks and epochs, and key files."""

from __future__ import annotations

import os

from core_helpers import make_core

from xend_vnet.kernel_shim.core.engine import DeliverFrame, EngineCore, SendUdp
from xend_vnet.kernel_shim.security.keystore import EpochSource, SecurityContext
from xend_vnet.vnet_id import VnetId

V97 = VnetId.parse("97")
KEY1 = bytes(range(32))
KEY2 = bytes(range(100, 132))
MAC_A = bytes.fromhex("aa0000000001")
MAC_B = bytes.fromhex("aa0000000002")
T0 = 1_800_000_000 * 10**9          # the injected wall clock, ns


class Clock:
    def __init__(self, ns: int = T0):
        self.ns = ns

    def __call__(self) -> int:
        return self.ns


def context(sender: int, clock: Clock, last: int = 0, saved: list | None = None,
            **kw) -> SecurityContext:
    persist = saved.append if saved is not None else None
    return SecurityContext(sender, EpochSource(clock, last, persist), **kw)


def secured_core(addr: str, sender: int, clock: Clock, level: str = "conf",
                 key: bytes = KEY1, **kw) -> EngineCore:
    return make_core(addr, vnet=V97, security=level, key=key,
                     context=context(sender, clock, **kw))


def sent(actions: list) -> list[SendUdp]:
    return [a for a in actions if isinstance(a, SendUdp)]


def delivered(actions: list) -> list[bytes]:
    return [a.frame for a in actions if isinstance(a, DeliverFrame)]


def write_key(path: str, key: bytes = KEY1, mode: int = 0o600) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.write(fd, (key.hex() + "\n").encode())
    os.close(fd)
    os.chmod(path, mode)
    return path
