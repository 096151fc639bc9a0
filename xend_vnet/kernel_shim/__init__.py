"""The tunnel engine vnetd and the vn tool (design.md 2, docs/architecture.md).

Pure protocol modules (no sockets, no clock): ``codec``, ``varp_cache``,
``vif_table``, ``peer_table``, ``counters``, ``core``, ``listing``,
``commands``.  The I/O adapters and the daemon move bytes between the kernel
and ``core.EngineCore``.
"""
