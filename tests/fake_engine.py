"""The engine's control socket without the kernel, for tests (design.md 5-6).

``FakeEngine`` is vnetd with the data path cut off: the real control server
(control/server.py) on a unix socket, every request evaluated by the real
command layer (control/commands.py) against ``FakeHost``, an ``EngineHost``
with a real ``EngineCore`` that keeps its TAPs and VXLAN devices in memory.
So validation, listings and errors are the engine's own, worded as the
engine words them, secured vnets included (a key file is read as vnetd
reads it).

What a test cannot reach through commands it can still arrange:
``host.fail_create`` makes the next device creation fail as a TAP error
does in the daemon; ``replies`` scripts the answer to one command by name
(counters after traffic, the status of a long-running engine, a refusal
from another namespace); ``restart()`` loses every vnet as a restarted
vnetd does.
"""

from __future__ import annotations

import errno
import os
import selectors
import threading
import time
from collections.abc import Callable

from xend_vnet import sxp
from xend_vnet.kernel_shim.control import commands
from xend_vnet.kernel_shim.control.commands import CommandError
from xend_vnet.kernel_shim.control.server import ControlServer
from xend_vnet.kernel_shim.core.engine import CoreOptions, EngineCore
from xend_vnet.kernel_shim.datapath.vxlan.table import VxlanTable, VxlanVnet, vni_of
from xend_vnet.vn import main as vn
from xend_vnet.vnet_id import VnetId

Reply = str | Callable[[sxp.Sxpr], str]


class FakeHost:
    """An ``EngineHost`` (commands.py) that records what the daemon would do.

    TAPs and VXLAN devices exist only as calls to ``on_add``/``on_del``
    (an in-memory network, a ``ip tuntap`` in a namespace).  ``vnets`` are
    put in the core directly, as vnets already there (the daemon's default
    vnets, say), without a ``create_vnet`` call."""

    def __init__(self, core: EngineCore | None = None, vnets=(), device: str = "eth0",
                 on_add: Callable[[str], None] | None = None,
                 on_del: Callable[[str], None] | None = None):
        self.core = core or EngineCore(CoreOptions())
        self.device = device
        self.vxlan = VxlanTable()
        self.owners: dict = {}          # kept by the commands (design.md 6)
        self.on_add = on_add
        self.on_del = on_del
        self.clock = 100.0
        self.pid = os.getpid()
        self.started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.fail_create: BaseException | None = None
        self.created: list = []         # (vid, ifname, security, key)
        self.vxlan_created: list = []   # (vid, ifname)
        self.deleted: list = []
        self.groups: list = []          # (addr, ttl) of varp.mcaddr
        self.peer_syncs: list = []      # the peers at each peers_changed
        self.purged = 0                 # engine.purge calls
        for n in vnets:
            vid = VnetId.parse(str(n))
            self.core.add_vnet(vid, vid.default_vnetif)

    def _device_added(self, ifname: str) -> None:
        if self.fail_create is not None:
            raise self.fail_create
        if self.on_add is not None:
            self.on_add(ifname)

    def _device_removed(self, ifname: str) -> None:
        if self.on_del is not None:
            self.on_del(ifname)

    def create_vnet(self, vid, ifname, security, key):
        self._device_added(ifname)
        try:
            self.core.add_vnet(vid, ifname, security, key)
        except ValueError as e:     # as the daemon words it; the new TAP goes again
            self._device_removed(ifname)
            raise CommandError(errno.EINVAL, f"vnet.add: {e}") from None
        self.created.append((vid, ifname, security, key))

    def create_vxlan_vnet(self, vid, ifname):
        self._device_added(ifname)
        self.vxlan_created.append((vid, ifname))
        self.vxlan.add(VxlanVnet(vid, ifname, vni_of(vid), 1450))

    def delete_vnet(self, vid):
        self.deleted.append(vid)
        vnet = self.vxlan.get(vid)
        if vnet is not None:
            self.vxlan.remove(vid)
        else:
            vnet = self.core.vnet(vid)
            self.core.remove_vnet(vid)
        self._device_removed(vnet.ifname)

    def peers_changed(self):
        self.peer_syncs.append(sorted(p.addr for p in self.core.peers))

    def set_mcaddr(self, addr, ttl):
        self.groups.append((addr, ttl))
        self.core.set_mcaddr(addr)

    def status(self):
        """The fields of the daemon's status that do not need its sockets."""
        core = self.core
        return [
            ["pid", str(self.pid)],
            ["started", self.started],
            ["group-joined", "yes"],
            ["mcaddr", core.mcaddr],
            ["port", str(core.port)],
            ["address", core.self_address or ""],
            ["vnets", str(len(core.vnets()) + len(self.vxlan))],
            ["vxlan-vnets", str(len(self.vxlan))],
            ["vxlan-control-plane", self.vxlan.control_plane],
            *([["vxlan-local", self.vxlan.local]] if self.vxlan.evpn else []),
            ["peers", str(len(core.peers))],
        ]

    def now(self):
        return self.clock

    def kernel_counters(self):
        """No kernel path here: every vnet is in user space."""
        return {}

    def purge_kernel(self):
        self.purged += 1


class FakeEngine:
    """The real control server and command layer over a ``FakeHost``, served
    from a thread: ``start()``, then requests on ``path``, then ``close()``."""

    def __init__(self, path: str, on_add: Callable[[str], None] | None = None,
                 on_del: Callable[[str], None] | None = None,
                 allow_foreign_netns: bool = False):
        self.path = path
        self.on_add = on_add
        self.on_del = on_del
        self.allow_foreign_netns = allow_foreign_netns
        self.host = FakeHost(on_add=on_add, on_del=on_del)
        self.requests: list[sxp.Sxpr] = []      # every form received, in order
        self.replies: dict[str, Reply] = {}     # scripted answers by command name
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life cycle ----------------------------------------------------------------

    def start(self) -> FakeEngine:
        selector = selectors.DefaultSelector()
        server = ControlServer(self.path, self.handle_request, selector,
                               self.allow_foreign_netns)
        server.listen()
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, args=(server, selector),
                                        daemon=True)
        self._thread.start()
        return self

    def _serve(self, server: ControlServer, selector: selectors.BaseSelector) -> None:
        try:
            while not self._stop.is_set():
                for key, mask in selector.select(0.05):
                    key.data(mask, time.monotonic())
                now = time.monotonic()
                deadline = server.next_deadline()
                if deadline is not None and deadline <= now:
                    server.expire(now)
        finally:
            server.close()
            selector.close()

    def close(self) -> None:
        """Stop serving and remove the socket, as a stopped vnetd does."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(5)
            self._thread = None

    def restart(self) -> None:
        """Lose every vnet, as a restarted vnetd does (its devices stay)."""
        with self.lock:
            self.host = FakeHost(on_add=self.on_add, on_del=self.on_del)

    # -- requests ------------------------------------------------------------------

    def handle_request(self, text: str) -> str:
        """What the control server answers: form by form, a scripted reply or
        the engine's, stopping at the first error as the engine does."""
        with self.lock:
            try:
                forms = sxp.parse_all(text)
            except sxp.ParseError:
                return commands.execute(self.host, text)
            self.requests.extend(forms)
            out = []
            for form in forms:
                name = form[0] if isinstance(form, list) and form else None
                scripted = self.replies.get(name) if isinstance(name, str) else None
                if scripted is None:
                    reply = commands.execute(self.host, sxp.to_string(form))
                else:
                    reply = scripted(form) if callable(scripted) else scripted
                if reply.lstrip().startswith("(err"):
                    return reply
                out.append(reply)
            return "".join(out)

    def execute(self, text: str) -> str:
        """Run a request on the engine directly, as vnetd runs its -f file: the
        state a test starts from, not recorded in ``requests``."""
        with self.lock:
            return commands.execute(self.host, text)

    def sent(self, name: str) -> list[sxp.Sxpr]:
        """The requests with this command name."""
        return [f for f in self.requests if isinstance(f, list) and f[:1] == [name]]

    @property
    def vnets(self) -> dict[str, tuple[str, str]]:
        """canonical id -> (vnetif, security) of every vnet, both data paths."""
        with self.lock:
            vnets = {v.vid.canonical: (v.ifname, v.security) for v in self.host.core.vnets()}
            vnets.update((v.vid.canonical, (v.ifname, "none")) for v in self.host.vxlan.vnets())
            return vnets

    def listed(self, vnet: str) -> sxp.Sxpr:
        """This vnet's form in the engine's ``(vnet.list)``."""
        canonical = VnetId.parse(vnet).canonical
        (form,) = [f for f in sxp.parse_all(self.execute("(vnet.list)"))
                   if sxp.child_value(f, "id") == canonical]
        return form


def run_vn(engine: FakeEngine, capsys, *argv: str) -> tuple[int, str, str]:
    """``vn --control PATH ARGV...`` against ``engine``: (status, stdout, stderr)."""
    status = vn.main(["--control", engine.path, *argv])
    out, err = capsys.readouterr()
    return status, out, err


def err(reply: str) -> tuple[int, str]:
    """(errno, message) of a reply that must be one ``(err ...)`` form (design.md 6)."""
    forms = sxp.parse_all(reply)
    assert len(forms) == 1 and forms[0][0] == "err", reply
    return int(sxp.child_value(forms[0], "errno")), sxp.child_value(forms[0], "message")
