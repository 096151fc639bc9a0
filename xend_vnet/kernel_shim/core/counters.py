"""Engine counters: per vnet and per drop reason (vnet.stats).

Every datagram given to ``EngineCore.receive_udp`` ends in exactly one
outcome: accepted as data, accepted as VARP, or dropped under one reason,
so ``rx_datagrams == rx_data + rx_varp + rx_fast + sum(rx_dropped.values())``,
where ``rx_fast`` counts the fast-framing messages between our engines
(the fast framing: hellos and segments; the frames they complete count in
``rx_fast_frames``, and frames sent whole in ``tx_fast``).  A VFWD
message counts once, with the outcome of the packet it carries; a copy seen
again within the duplicate window is dropped as ``duplicate`` and also
counted in ``vfwd_duplicates`` (protocol.md 7, loop safety).  Proto-97 packets
(``EngineCore.receive_etherip``) count the same way, and in ``rx_etherip``.  Frames
read off a TAP that go nowhere count in ``tap_dropped`` (or in the vnet's
``dropped`` when the vnet is known).  Sends and writes the I/O adapters
could not make count in ``io_dropped`` (engine.status), by reason.  What
the kernel path reports (design.md 1.1) is no datagram: a report taken
counts in ``kernel_seen``, one refused in ``kernel_ignored`` by reason, an
entry its use kept from ageing in ``kernel_used``.

Entries a bounded table refused (core/bounds.py, docs/security.md "Resource
limits") count in the vnet's ``refused``, or in the table's own when no vnet
is known, by table and bound; they are not outcomes of a datagram (one whose
frame is still delivered is not dropped).  A datagram dropped because a
table is full (reassembly) counts in ``rx_dropped`` under the same reason.
"""

from __future__ import annotations


def count(table: dict[str, int], reason: str) -> None:
    table[reason] = table.get(reason, 0) + 1


class VnetCounters:
    """One vnet: frames in from the network (rx) and out from its TAP (tx)."""

    __slots__ = (
        "announced",
        "dropped",
        "flooded",
        "learned",
        "refused",
        "rx_bytes",
        "rx_packets",
        "tx_bytes",
        "tx_packets",
    )

    def __init__(self) -> None:
        self.rx_packets = 0
        self.rx_bytes = 0
        self.tx_packets = 0
        self.tx_bytes = 0
        self.flooded = 0        # tx frames sent to the group (unknown or group dst)
        self.learned = 0        # cache entries made or moved by frames and announces
        self.announced = 0      # gratuitous announces for MACs new on the TAP
        self.dropped: dict[str, int] = {}
        self.refused: dict[str, int] = {}   # table entries not made (core/bounds.py)

    FIELDS = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes",
              "flooded", "learned", "announced")

    def fields(self) -> list[tuple[str, int]]:
        """The numeric counters in listing order."""
        return [(name, getattr(self, name)) for name in self.FIELDS]


class EngineCounters:
    """Counters of the engine as a whole."""

    __slots__ = (
        "io_dropped",
        "kernel_ignored",
        "kernel_probes",
        "kernel_seen",
        "kernel_used",
        "rx_bytes",
        "rx_data",
        "rx_datagrams",
        "rx_dropped",
        "rx_varp",
        "tap_dropped",
        "tx_bytes",
        "tx_datagrams",
        "rx_etherip",
        "rx_fast",
        "rx_fast_frames",
        "tx_fast",
        "varp_replies",
        "vfwd_duplicates",
        "vfwd_resent",
        "vfwd_rx",
        "vfwd_tx",
    )

    def __init__(self) -> None:
        self.rx_datagrams = 0
        self.rx_bytes = 0
        self.rx_data = 0
        self.rx_varp = 0
        self.tx_datagrams = 0
        self.tx_bytes = 0
        self.vfwd_rx = 0
        self.vfwd_tx = 0
        self.vfwd_resent = 0        # inner packets re-multicast onto the local link
        self.vfwd_duplicates = 0    # copies dropped by the duplicate window
        self.rx_etherip = 0         # IP protocol 97 packets received (protocol.md 4.3)
        self.varp_replies = 0
        self.rx_fast = 0
        self.rx_fast_frames = 0
        self.tx_fast = 0
        self.kernel_seen = 0        # sources the kernel path reported (design.md 1.1)
        self.kernel_used = 0        # entries kept from ageing by the kernel path's use of them
        self.kernel_probes = 0      # announces asking whether a host's kernel path takes a vnet
        self.kernel_ignored: dict[str, int] = {}    # reports not taken, by reason
        self.rx_dropped: dict[str, int] = {}
        self.tap_dropped: dict[str, int] = {}
        self.io_dropped: dict[str, int] = {}    # by the I/O adapters (engine.status)

    FIELDS = ("rx_datagrams", "rx_bytes", "rx_data", "rx_varp", "tx_datagrams",
              "tx_bytes", "vfwd_rx", "vfwd_tx", "vfwd_resent", "vfwd_duplicates",
              "rx_etherip", "varp_replies", "rx_fast", "rx_fast_frames", "tx_fast",
              "kernel_seen", "kernel_used", "kernel_probes")

    def fields(self) -> list[tuple[str, int]]:
        """The numeric counters in listing order."""
        return [(name, getattr(self, name)) for name in self.FIELDS]
