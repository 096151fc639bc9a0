"""Peers for multicast forwarding across subnets (protocol.md 7).

Keyed by IPv4 text.  The port is stored and listed but never used for
sending: legacy forwards to the VARP port whatever was configured.
"""

from __future__ import annotations

from collections.abc import Iterator


class Peer:
    __slots__ = ("addr", "port", "rx_packets", "tx_packets")

    def __init__(self, addr: str, port: int):
        self.addr = addr
        self.port = port
        self.tx_packets = 0
        self.rx_packets = 0


class PeerTable:
    def __init__(self) -> None:
        self._peers: dict[str, Peer] = {}

    def __len__(self) -> int:
        return len(self._peers)

    def __iter__(self) -> Iterator[Peer]:
        return iter(self._peers.values())

    def add(self, addr: str, port: int) -> Peer:
        """Add a peer; adding it again updates the port and keeps its counters."""
        peer = self._peers.get(addr)
        if peer is None:
            peer = self._peers[addr] = Peer(addr, port)
        else:
            peer.port = port
        return peer

    def remove(self, addr: str) -> None:
        """KeyError when ``addr`` is not a peer."""
        del self._peers[addr]

    def get(self, addr: str) -> Peer | None:
        return self._peers.get(addr)

    def sorted(self) -> list:
        return [self._peers[a] for a in sorted(self._peers, key=_ip_key)]


def _ip_key(addr: str) -> tuple:
    return tuple(int(p) for p in addr.split("."))
