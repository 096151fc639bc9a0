"""In-memory stand-in for xend_vnet.bridges (same functions), for tests without root."""

from __future__ import annotations

import contextlib

from xend_vnet.bridges import BridgeError, NotOurs


class FakeNet:
    def __init__(self):
        # name -> {"kind": str, "master": str | None, "up": bool}
        self.links: dict[str, dict] = {}
        self.fail: dict[str, str] = {}   # function name -> reason, raised once
        self.vxlan_deleted: list = []    # (name, vid) of delete_vxlan_device

    def _maybe_fail(self, what: str, name: str) -> None:
        if what in self.fail:
            raise BridgeError(name, self.fail.pop(what))

    def add_link(self, name: str, kind: str = "tap") -> None:
        self.links[name] = {"kind": kind, "master": None, "up": False}

    def remove_link(self, name: str) -> None:
        self.links.pop(name, None)
        for link in self.links.values():
            if link["master"] == name:
                link["master"] = None

    def _get(self, name: str) -> dict:
        if name not in self.links:
            raise BridgeError(name, "no such interface")
        return self.links[name]

    def batch(self):
        """bridges.batch(): the same functions for many vnets at once."""
        self.batches = getattr(self, "batches", 0) + 1
        return contextlib.nullcontext(self)

    def link_exists(self, name: str) -> bool:
        return name in self.links

    def is_bridge(self, name: str) -> bool:
        return self.links.get(name, {}).get("kind") == "bridge"

    def ensure_bridge(self, name: str) -> bool:
        self._maybe_fail("ensure_bridge", name)
        if name in self.links:
            if self.links[name]["kind"] != "bridge":
                raise BridgeError(name, "exists and is not a bridge")
            self.links[name]["up"] = True
            return False
        self.add_link(name, "bridge")
        self.links[name]["up"] = True
        return True

    def enslave(self, bridge: str, ifname: str) -> None:
        self._maybe_fail("enslave", ifname)
        self._get(bridge)
        self._get(ifname)["master"] = bridge

    def release(self, ifname: str) -> None:
        self._get(ifname)["master"] = None

    def set_up(self, ifname: str) -> None:
        self._maybe_fail("set_up", ifname)
        self._get(ifname)["up"] = True

    def delete_bridge(self, name: str) -> None:
        if not self.is_bridge(name):
            raise BridgeError(name, "is not a bridge")
        self.remove_link(name)

    def delete_tap(self, name: str) -> bool:
        self._maybe_fail("delete_tap", name)
        if name not in self.links:
            return False
        if self.links[name]["kind"] != "tap":
            raise NotOurs(name, f"is a {self.links[name]['kind']}, not a TAP; left in place")
        self.remove_link(name)
        return True

    def delete_vxlan_device(self, name: str, vid) -> bool:
        self.vxlan_deleted.append((name, vid))
        if name not in self.links:
            return False
        self.remove_link(name)
        return True

    def bridge_ports(self, name: str) -> list[str]:
        self._get(name)
        return sorted(n for n, link in self.links.items() if link["master"] == name)

    def master_of(self, ifname: str) -> str | None:
        return self._get(ifname)["master"]
