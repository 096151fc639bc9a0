"""The tunnel engine vnetd (design.md 2, docs/architecture.md).

Subpackages by job, lowest layer first: ``wire`` (codecs), ``security``
(secured vnets), ``core`` (the sans-IO state machine), ``datapath`` (the
event loop and everything that moves bytes), ``control`` (the control
socket and its commands); ``engine.py`` assembles them and ``daemon.py`` is
the vnetd process around the engine.
"""
