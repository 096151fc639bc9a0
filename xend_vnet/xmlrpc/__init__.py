"""The xend vnet API server ``xend-vnet`` (protocol.md 10, design.md 4, 5, 9).

``service`` holds the create/delete/list semantics and the reconcile of
stored vnets with the engine; ``server`` carries it over XML-RPC on a unix
socket and optionally TCP; ``importer`` brings in vnets of a legacy xend;
``cli`` is the ``xend-vnet`` command.
"""
