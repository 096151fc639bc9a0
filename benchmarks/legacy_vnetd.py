"""Running the legacy C vnetd as a reference peer, in the current network
namespace of the command (benchmarks and interop tests).

The binary is never part of this project: its path always comes from the
caller (an option or an environment variable).  The daemon wants a host of
its own: it keeps its control socket at /tmp/vnetd and takes its address
from the host name, so it runs in a mount and UTS namespace of its own
with a private /tmp (a state directory bound over it) and the host name
set to its address.  It reads its vnets from a file given with ``-f``; read
after /tmp is covered, the file lives in the state directory.  Its TAPs,
``vnif`` and the vnet id in four hex digits, come up down and go with the
process; it also makes vnets 2, 3 and 4 at start.
"""

from __future__ import annotations

import os

# $1 address (the host name), $2 state directory (the private /tmp), $3 the
# binary, opened before /tmp is covered (it may live under /tmp), then its arguments.
WRAPPER = ('exec 3<"$3" && hostname "$1" && mount --bind "$2" /tmp && shift 3 '
           '&& exec /proc/self/fd/3 "$@"')
CONFIG = "vnets.conf"


def command(binary: str, addr: str, state_dir: str, vnets: list[str],
            extra: list[str] | None = None) -> list[str]:
    """The argv that runs ``binary`` as the host ``addr`` carrying ``vnets``
    (ids as hex text), its state in ``state_dir``."""
    with open(os.path.join(state_dir, CONFIG), "w") as f:
        for vid in vnets:
            f.write(f"(vnet.add (id {vid}))\n")
    return ["unshare", "-m", "-u", "sh", "-c", WRAPPER, "sh", addr, state_dir, binary,
            "-f", f"/tmp/{CONFIG}", *(extra or [])]


def tap_name(vid: str) -> str:
    """The TAP the daemon opens for vnet ``vid`` (hex text)."""
    return f"vnif{int(vid, 16):04x}"
