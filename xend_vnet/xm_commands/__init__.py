"""``xm``: the vnet subcommands (management.md 1.2-1.3); other subcommands go
to the next real ``xm`` on PATH."""
