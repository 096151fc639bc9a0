"""``xm``: the vnet subcommands (protocol.md 10.2-10.3); other subcommands go
to the next real ``xm`` on PATH."""
