"""KernelShim: the legacy wire's known unicast, encapsulated and
decapsulated by TC eBPF programs (bpf/vnet_shim.bpf.c), and the maps that
tell them where each MAC is.

The programs send exactly what the user-space path sends (protocol.md 2,
4.1, 4.2: UDP from and to the engine's port, checksum 0, VnetMsgHdr
``00 02 00 00``, etherip ``00 40`` and the vnet id, the frame; outer source
the care-of address, DF clear, TTL 64).  What they do not take stays with
the engine: it falls through to the TAP (egress) or to the host's UDP
socket (ingress) unchanged, and is counted per vnet under ``to_user_*``.

Each attached vnet gets a kernel port (port.py): a veth pair whose end P
is a port of the TAP's bridge, with static fdb entries (fdb.py) for the
vnet's remote MACs, so the bridge sends their unicast to P, where the
encapsulator takes it; the decapsulator delivers into the bridge through
P.  So the known unicast needs neither the TAP nor the engine: it flows on
while no engine runs and the TAP has no carrier.  The TAP may join its
bridge after ``attach`` (xend-vnet enslaves it after vnetd made it, an
operator may move it): ``refresh()``, which the engine calls from its
periodic refresh, follows it with P, and puts back the fdb entries the
bridge moved or lost.

State lives in the kernel, not in this object: the decapsulator's tc
filter on the underlay holds its program, and the program holds every map.
``close()`` leaves them, the kernel ports and their fdb entries (known
unicast keeps flowing while no engine runs); the next ``open()`` in the
same network namespace finds our filter (tc.py says which filters are
ours), takes the maps from the program's map ids and loads a fresh object
on those maps ("adoption"), and takes the ports by their tags.  Nothing
needs a bpffs pin for that, which matters because ``ip netns exec`` gives
each command its own /sys and so its own bpffs; with ``pin_dir`` (a
directory on a bpffs) the maps and programs are pinned there as well, for
tools.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from ....vnet_id import VnetId
from . import build, fdb, maps, port
from .libbpf import BPF_ANY, Libbpf, LibbpfError, RingBuffer
from .maps import LocalSeen, RemoteSeen, ShimEvent
from .port import KernelPort, LinkInfo, PortError
from .tc import EGRESS, INGRESS, ROLE_DECAP, ROLE_ENCAP, TcError, TcFilters

MAP_NAMES = tuple(maps.MAP_SHAPES)
PROGRAMS = ("vs_encap", "vs_decap")
# what the decapsulator uses: the maps an adoption must find (vs_devs and
# vs_locals only the encapsulators use; with no vnet attached they are empty)
DECAP_MAPS = frozenset(MAP_NAMES) - {"vs_devs", "vs_locals"}
# (vnet, MAC) pairs whose fdb entry is retried at the next refresh, at most;
# past it the next refresh reads every entry again
RETRY_BOUND = maps.MAX_REMOTES

MacKey = tuple[VnetId, bytes]       # (vnet, MAC): a remote or local entry

__all__ = ["KernelPathUnavailable", "ShimConfig", "KernelShim", "ShimEvent", "RemoteSeen",
           "LocalSeen", "KernelPortInfo", "find_object"]


class KernelPathUnavailable(Exception):
    """The kernel path cannot be used (or a change to it failed); ``reason``
    is one line for ``vn status``."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ShimConfig:
    underlay: str          # the underlay device (the engine's --device, or the care-of address's)
    local_addr: str        # outer IPv4 source: the engine's care-of address
    port: int = 1798       # the engine's --port
    mtu: int = 1500        # the TAPs' MTU (--mtu): for MSS clamping and fit checks


def find_object(object_path: str | None = None) -> str:
    """The compiled object to load: ``object_path`` or the package's own;
    KernelPathUnavailable("no compiled object: ...") when it is not there."""
    path = object_path or build.object_path()
    if not os.path.isfile(path):
        raise KernelPathUnavailable(
            f"no compiled object: {path} (build the package with clang installed)")
    return path


def _unavailable(what: str, e: BaseException) -> KernelPathUnavailable:
    code = getattr(e, "errno", None)
    if code == errno.EPERM:
        return KernelPathUnavailable(f"{what}: EPERM (needs CAP_BPF and CAP_NET_ADMIN)")
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return KernelPathUnavailable(f"{what}: {text}")


def _open_iproute():
    from pyroute2 import IPRoute
    return IPRoute()


@dataclass(frozen=True)
class KernelPortInfo:
    """What ``KernelShim.kernel_ports`` says of one vnet's port."""
    p_name: str
    p_index: int
    q_name: str
    q_index: int
    bridge: int          # P's bridge (0: none)
    carries: bool        # the maps send the vnet's unicast through P


@dataclass
class _Vnet:
    """An attached vnet as this object knows it (the maps say the same)."""
    tap: int
    index: int
    port: KernelPort
    carries: bool = False       # vs_vnets and vs_devs send unicast through P


class KernelShim:
    """The programs, filters, maps and kernel ports of one engine (one
    network namespace)."""

    def __init__(self, config: ShimConfig, lib: Libbpf, ipr, obj: int, progs: dict[str, int],
                 map_fds: dict[str, int], own_fds: list[int], underlay_ifindex: int,
                 pin_dir: str | None, adopted: bool):
        self.config = config
        self.lib = lib
        self.ipr = ipr
        self.tc = TcFilters(ipr)
        self._obj = obj
        self._progs = progs
        self._maps = map_fds
        self._own_fds = own_fds
        self.underlay_ifindex = underlay_ifindex
        self.pin_dir = pin_dir
        self.adopted = adopted
        self._cpus = lib.possible_cpus()
        self._ring = RingBuffer(lib, map_fds["vs_events"])
        self._closed = False
        self._vn: dict[VnetId, _Vnet] = {}
        # the remote and local maps' MACs per vnet, as this object wrote them
        # (or found them at adoption): which fdb entries the vnets want
        self._remote_macs: dict[VnetId, set[bytes]] = {}
        self._local_macs: dict[VnetId, set[bytes]] = {}
        self._fdb_retry: set[tuple[VnetId, bytes]] = set()
        self._fdb_resync = False
        self._watch: fdb.FdbWatch | None = None

    # -- opening ----------------------------------------------------------------------

    @classmethod
    def open(cls, config: ShimConfig, *, object_path: str | None = None,
             pin_dir: str | None = None) -> KernelShim:
        """Load the object (or adopt what a previous engine left in this
        network namespace), write the config and put the decapsulator on the
        underlay's ingress.  KernelPathUnavailable(reason) on any failure."""
        path = find_object(object_path)
        try:
            socket.inet_aton(config.local_addr)
        except OSError:
            raise KernelPathUnavailable(f"not an IPv4 care-of address: {config.local_addr!r}")
        if not 1 <= config.port <= 65535 or not 68 <= config.mtu <= 65535:
            raise KernelPathUnavailable(f"bad port {config.port} or mtu {config.mtu}")
        try:
            lib = Libbpf.get()
        except LibbpfError as e:
            raise KernelPathUnavailable(str(e).splitlines()[0]) from None
        try:
            ipr = _open_iproute()
        except Exception as e:  # noqa: BLE001 -- no netlink: no kernel path
            raise _unavailable("netlink", e) from None
        try:
            return cls._open(config, lib, ipr, path, pin_dir)
        except BaseException:
            ipr.close()
            raise

    @classmethod
    def _open(cls, config, lib, ipr, path, pin_dir) -> KernelShim:
        links = ipr.link_lookup(ifname=config.underlay)
        if not links:
            raise KernelPathUnavailable(f"no underlay device {config.underlay}")
        ul_index = links[0]
        (link,) = ipr.get_links(ul_index)
        ul_mtu = link.get_attr("IFLA_MTU") or 1500
        tc = TcFilters(ipr)

        own_fds: list[int] = []
        adopted = cls._adoptable(lib, tc, ipr, ul_index, own_fds)
        try:
            obj = lib.open_file(path)
        except LibbpfError as e:
            for fd in own_fds:
                os.close(fd)
            raise _unavailable("cannot open object", e) from None
        try:
            for name, fd in adopted.items():
                lib.reuse_map(lib.find_map(obj, name), fd)
            lib.load(obj)
            progs = {name: lib.program_fd(obj, name) for name in PROGRAMS}
            map_fds = {name: lib.map_fd(lib.find_map(obj, name)) for name in MAP_NAMES}
        except LibbpfError as e:
            lib.close_object(obj)
            for fd in own_fds:
                os.close(fd)
            if e.errno == errno.EPERM:
                raise _unavailable("load refused", e) from None
            raise KernelPathUnavailable(
                "verifier said: " + str(e).splitlines()[0][:400]) from None
        shim = cls(config, lib, ipr, obj, progs, map_fds, own_fds, ul_index, pin_dir,
                   bool(adopted))
        try:
            shim._write_config(ul_index, ul_mtu)
            # Notifications from now on: nothing the bridges do after the
            # first full look at their entries is missed.
            shim._watch = fdb.FdbWatch()
            found = port.links(ipr)
            if adopted:
                shim._load_mirrors()
                shim._reconcile_taps(found)
            else:
                shim._drop_stale_encaps()
                shim._drop_ports(found)
            tc.attach(ul_index, INGRESS, progs["vs_decap"], ROLE_DECAP)
            if pin_dir:
                shim._pin()
            shim._refresh(full=True)
        except Exception as e:
            shim._release()
            if isinstance(e, KernelPathUnavailable):
                raise
            raise _unavailable("clsact refused" if isinstance(e, TcError) else
                               "maps" if isinstance(e, LibbpfError) else "kernel port", e) \
                from None
        return shim

    @staticmethod
    def _prog_maps(lib: Libbpf, prog_id: int) -> dict[str, tuple[int, int]]:
        """Map name -> (fd, id) of the maps of ours a program uses whose
        shapes are this build's (the caller closes the fds)."""
        found: dict[str, tuple[int, int]] = {}
        try:
            pfd = lib.prog_fd_by_id(prog_id)
        except LibbpfError:
            return found
        try:
            _name, ids = lib.prog_map_ids(pfd)
            for map_id in ids:
                fd = lib.map_fd_by_id(map_id)
                info = lib.map_info(fd)
                name = info["name"]
                shape = maps.MAP_SHAPES.get(name)
                if name in found or shape is None or (
                        name != "vs_events" and
                        (info["key_size"], info["value_size"], info["max_entries"]) != shape):
                    os.close(fd)
                    continue
                found[name] = (fd, map_id)
        except LibbpfError:
            pass
        finally:
            os.close(pfd)
        return found

    @classmethod
    def _adoptable(cls, lib: Libbpf, tc: TcFilters, ipr, ul_index: int,
                   own_fds: list[int]) -> dict:
        """Map name -> fd of the maps our decapsulator on this underlay uses
        (and, of those it does not use, the ones our encapsulators on the same
        maps use), when their shapes and layout version are this build's; {}
        when there is none or it is another layout (a fresh load replaces it)."""
        try:
            decaps = [f for f in tc.ours(ul_index, INGRESS) if f.role == ROLE_DECAP]
        except TcError:
            return {}
        for f in decaps:
            found = cls._prog_maps(lib, f.prog_id) if f.prog_id else {}
            cfg = found.get("vs_config")
            version_ok = False
            if cfg is not None and set(found) >= DECAP_MAPS:
                raw = lib.lookup(cfg[0], (0).to_bytes(4, "little"), maps.CONFIG.size)
                version_ok = raw is not None and \
                    maps.Config.unpack(raw).version == maps.LAYOUT_VERSION
            if version_ok:
                for link in ipr.get_links():
                    for e in tc.ours(link["index"], EGRESS):
                        if e.role != ROLE_ENCAP or not e.prog_id:
                            continue
                        more = cls._prog_maps(lib, e.prog_id)
                        same = more.get("vs_config", (0, -1))[1] == cfg[1]
                        for name, (fd, map_id) in more.items():
                            if same and name not in found:
                                found[name] = (fd, map_id)
                            else:
                                os.close(fd)
                fds = {name: fd for name, (fd, _id) in found.items()}
                own_fds.extend(fds.values())
                return fds
            for fd, _id in found.values():
                os.close(fd)
        return {}

    def _write_config(self, ul_index: int, ul_mtu: int) -> None:
        c = self.config
        cfg = maps.Config(c.local_addr, ul_index, c.port, min(ul_mtu, 0xFFFF), c.mtu,
                          maps.mss_clamp(c.mtu, ul_mtu))
        self.lib.update(self._maps["vs_config"], (0).to_bytes(4, "little"), cfg.pack())

    def _load_mirrors(self) -> None:
        for name, mirror in (("vs_remotes", self._remote_macs), ("vs_locals", self._local_macs)):
            for k in self.lib.keys(self._maps[name], maps.MAC_KEY.size):
                vid, mac = maps.unpack_mac_key(k)
                mirror.setdefault(vid, set()).add(mac)

    def _reconcile_taps(self, found: dict[int, LinkInfo]) -> None:
        """After adoption: vnets whose TAP is gone lose their entries; the
        others get the freshly loaded encapsulator and their kernel port
        (the one a previous engine left, or a new one)."""
        ports, strays = port.find_ports(found)
        for link in strays:
            port.delete_tagged(self.ipr, link)
        for vid, (tap, index) in self._vnets().items():
            kept = ports.pop(vid, None)
            if tap not in found or not any(f.role == ROLE_ENCAP
                                           for f in self.tc.ours(tap, EGRESS)):
                self._forget(vid, tap)
                if kept is not None:
                    port.delete_port(self.ipr, kept)
                continue
            if kept is None:
                try:
                    kept, _made = port.make_port(self.ipr, vid, found[tap].mtu, found)
                except PortError:
                    # its name taken meanwhile: the vnet's next attach says so
                    self._forget(vid, tap)
                    for f in self.tc.ours(tap, EGRESS):
                        self.tc.remove(f)
                    continue
            raw = self.lib.lookup(self._maps["vs_vnets"], maps.vid_key(vid), maps.VNET.size)
            carries = raw is not None and \
                maps.VnetEntry.unpack(raw).port_ifindex == kept.p_index != 0
            vn = _Vnet(tap, index, kept, carries)
            self._install(vid, vn)
        for kept in ports.values():
            port.delete_port(self.ipr, kept)
        self._drop_stale_devs()

    def _drop_stale_encaps(self) -> None:
        """A fresh load owns the namespace: encapsulators an engine of
        another layout left on TAPs (with maps nothing else reads) go."""
        for link in self.ipr.get_links():
            for f in self.tc.ours(link["index"], EGRESS):
                self.tc.remove(f)

    def _drop_ports(self, found: dict[int, LinkInfo]) -> None:
        """Every kernel port of ours in the namespace (a fresh load: no
        vnet is attached; those attached again get theirs anew)."""
        ports, strays = port.find_ports(found)
        for kept in ports.values():
            port.delete_port(self.ipr, kept)
        for link in strays:
            port.delete_tagged(self.ipr, link)

    def _link_exists(self, ifindex: int) -> bool:
        try:
            return bool(self.ipr.get_links(ifindex))
        except Exception:  # noqa: BLE001 -- ENODEV and friends
            return False

    def _pin(self) -> None:
        os.makedirs(self.pin_dir, mode=0o700, exist_ok=True)
        for name, fd in list(self._maps.items()) + list(self._progs.items()):
            p = os.path.join(self.pin_dir, name)
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
            try:
                self.lib.pin(fd, p)
            except LibbpfError as e:
                raise _unavailable(f"cannot pin in {self.pin_dir}", e) from None

    # -- the map views ------------------------------------------------------------------

    def _vnets(self) -> dict[VnetId, tuple[int, int]]:
        fd = self._maps["vs_vnets"]
        out = {}
        for k in self.lib.keys(fd, maps.VID_KEY.size):
            raw = self.lib.lookup(fd, k, maps.VNET.size)
            if raw is not None:
                e = maps.VnetEntry.unpack(raw)
                out[maps.unpack_vid_key(k)] = (e.tap_ifindex, e.index)
        return out

    def _devs(self) -> dict[int, maps.DevEntry]:
        fd = self._maps["vs_devs"]
        out = {}
        for k in self.lib.keys(fd, maps.DEV_KEY.size):
            raw = self.lib.lookup(fd, k, maps.DEV.size)
            if raw is not None:
                out[maps.unpack_dev_key(k)] = maps.DevEntry.unpack(raw)
        return out

    def _drop_stale_devs(self) -> None:
        """Device entries of no attached vnet's TAP or port (a port made
        again has another ifindex)."""
        wanted = {i for vn in self._vn.values() for i in (vn.tap, vn.port.p_index)}
        for ifindex in self._devs():
            if ifindex not in wanted:
                self.lib.delete(self._maps["vs_devs"], maps.dev_key(ifindex))

    def _forget(self, vid: VnetId, tap: int) -> None:
        self.lib.delete(self._maps["vs_vnets"], maps.vid_key(vid))
        for ifindex, entry in self._devs().items():
            if entry.vid == vid:
                self.lib.delete(self._maps["vs_devs"], maps.dev_key(ifindex))
        for name in ("vs_remotes", "vs_locals"):
            fd = self._maps[name]
            for k in self.lib.keys(fd, maps.MAC_KEY.size):
                if maps.unpack_mac_key(k)[0] == vid:
                    self.lib.delete(fd, k)
        self._remote_macs.pop(vid, None)
        self._local_macs.pop(vid, None)
        self._fdb_retry = {k for k in self._fdb_retry if k[0] != vid}

    def _write_entries(self, vid: VnetId, vn: _Vnet) -> None:
        """vs_vnets and vs_devs as ``vn`` says: through P when it carries."""
        p = vn.port.p_index
        entry = maps.VnetEntry(vn.tap, p if vn.carries else 0, vn.port.q_index, vn.index)
        self.lib.update(self._maps["vs_vnets"], maps.vid_key(vid), entry.pack())
        self.lib.update(self._maps["vs_devs"], maps.dev_key(vn.tap),
                        maps.DevEntry(vid, vn.index, maps.DEV_TAP,
                                      p if vn.carries else 0).pack())
        self.lib.update(self._maps["vs_devs"], maps.dev_key(p),
                        maps.DevEntry(vid, vn.index, maps.DEV_PORT, vn.tap).pack())

    def _install(self, vid: VnetId, vn: _Vnet) -> None:
        """The maps' entries and the encapsulators of an attached vnet."""
        self._write_entries(vid, vn)
        self.tc.attach(vn.tap, EGRESS, self._progs["vs_encap"], ROLE_ENCAP)
        self.tc.attach(vn.port.p_index, EGRESS, self._progs["vs_encap"], ROLE_ENCAP)
        self._vn[vid] = vn

    def _guard(self, what: str, func, *args):
        if self._closed:
            raise KernelPathUnavailable("kernel shim closed")
        try:
            return func(*args)
        except (LibbpfError, TcError, PortError, fdb.FdbError, maps.MapValueError) as e:
            raise _unavailable(what, e) from None

    # -- vnets --------------------------------------------------------------------------

    def attach(self, vid: VnetId, tap_ifindex: int) -> None:
        """Encapsulate at the TAP's egress and at the vnet's kernel port (made
        now, or the one left by an earlier engine), decapsulate the vnet's
        data; when the TAP is on a bridge already, P joins it at once."""
        self._guard(f"attach {vid}", self._attach, vid, tap_ifindex)

    def _attach(self, vid: VnetId, tap: int) -> None:
        current = self._vnets()
        if vid in current and current[vid][0] != tap:
            self._detach(vid)
            current = self._vnets()
        found = port.links(self.ipr)
        if tap not in found:
            raise KernelPathUnavailable(f"attach {vid}: no TAP with ifindex {tap}")
        if vid in current:
            index = current[vid][1]
            fresh = False
        else:
            used = {i for _t, i in current.values()}
            index = next((i for i in range(maps.MAX_VNETS) if i not in used), None)
            if index is None:
                raise KernelPathUnavailable(
                    f"attach {vid}: {maps.MAX_VNETS} vnets already in the kernel path")
            fresh = True
        vn = self._vn.get(vid)
        if vn is not None:
            vn.tap, vn.index = tap, index
        try:
            if vn is None or vn.port.p_index not in found:
                kept, _made = port.make_port(self.ipr, vid, found[tap].mtu, found)
                vn = _Vnet(tap, index, kept)
                found = port.links(self.ipr)
            if fresh:
                zero = maps.pack_counters({}) * self._cpus
                self.lib.update(self._maps["vs_counters"], maps.index_key(index), zero)
                self.lib.update(self._maps["vs_budget"], maps.index_key(index), b"\0" * 16)
            self._install(vid, vn)
            self._converge(vid, vn, found, None)
        except BaseException:
            # Nothing half-made stays: without its port, the vnet's frames
            # go to the engine as before the attach.
            self._vn.pop(vid, None)
            self._forget(vid, tap)
            if vn is not None:
                try:
                    port.delete_port(self.ipr, vn.port)
                except PortError:
                    pass
            raise

    def detach(self, vid: VnetId) -> None:
        """Remove the vnet's filter, kernel port, fdb entries and every map
        entry of it."""
        self._guard(f"detach {vid}", self._detach, vid)

    def _detach(self, vid: VnetId) -> None:
        vn = self._vn.pop(vid, None)
        found = self._vnets().get(vid)
        if vn is not None:
            self._drop_tap_entries(vid, vn)
            if vn.carries:
                vn.carries = False
                if found is not None:
                    self._write_entries(vid, vn)
            port.delete_port(self.ipr, vn.port)
        if found is None:
            return
        tap = found[0]
        if self._link_exists(tap):
            for f in self.tc.ours(tap, EGRESS):
                self.tc.remove(f)
        self._forget(vid, tap)

    def _drop_tap_entries(self, vid: VnetId, vn: _Vnet) -> None:
        """Our entries the bridge moved to the TAP's port (static there):
        the remote MACs' entries on P go with P."""
        if not vn.port.master:
            return
        entries = fdb.dump(self.ipr)
        for mac in self._remote_macs.get(vid, ()):
            entry = entries.get((vn.port.master, mac))
            if entry is not None and entry.port == vn.tap and \
                    fdb.is_ours(entry, vn.port.p_index, vn.tap):
                fdb.remove(self.ipr, entry)

    def attached(self) -> dict[VnetId, int]:
        """vnet -> TAP ifindex of the vnets the kernel path carries."""
        return {vid: tap for vid, (tap, _i) in self._guard("attached", self._vnets).items()}

    def kernel_ports(self) -> dict[VnetId, KernelPortInfo]:
        """vnet -> its kernel port: names, ifindexes, P's bridge and whether
        the maps send the vnet's unicast through P."""
        if self._closed:
            raise KernelPathUnavailable("kernel shim closed")
        return {vid: KernelPortInfo(vn.port.p_name, vn.port.p_index, vn.port.q_name,
                                    vn.port.q_index, vn.port.master, vn.carries)
                for vid, vn in self._vn.items()}

    # -- keeping up with the bridges ------------------------------------------------------

    def refresh(self) -> None:
        """Follow the TAPs' bridges and the bridges' forwarding databases;
        the engine calls it from its periodic refresh.  A vnet's port P
        joins the bridge its TAP is on (and leaves it when the TAP leaves),
        takes the TAP's MTU, is made again if it was deleted; a remote MAC's
        fdb entry that the bridge lost or moved to the TAP's port is put
        back on P.  Cheap when nothing changed: one link dump and the fdb
        notifications queued since the last call (every entry is read only
        when a TAP changed bridges or notifications were lost)."""
        if self._closed:
            raise KernelPathUnavailable("kernel shim closed")
        try:
            self._refresh(False)
        except KernelPathUnavailable:
            raise
        except Exception as e:  # noqa: BLE001 -- PortError, NetlinkError, LibbpfError, TcError
            raise _unavailable("refresh", e) from None

    def _refresh(self, full: bool) -> None:
        found = port.links(self.ipr)
        notes, lost = self._watch.drain() if self._watch is not None else ([], False)
        # read after the notifications: newer than any of them
        entries = fdb.dump(self.ipr) if full or lost or self._fdb_resync else None
        self._fdb_resync = False
        synced: set[VnetId] = set()
        failure: Exception | None = None
        for vid, vn in list(self._vn.items()):
            try:
                entries, resynced = self._converge(vid, vn, found, entries)
            except (PortError, TcError, LibbpfError, fdb.FdbError) as e:
                failure = failure or e      # the other vnets go on; this one at the next refresh
                continue
            if resynced:
                synced.add(vid)
        self._follow(fdb.latest(notes), skip=synced)
        self._retry()
        if failure is not None:
            raise failure

    def _converge(self, vid: VnetId, vn: _Vnet, found: dict[int, LinkInfo],
                  entries: dict | None) -> tuple[dict | None, bool]:
        """Make vnet ``vid``'s port what its TAP says (``found``: a link
        dump); with ``entries`` (every fdb entry, read for this refresh) its
        fdb entries too, as when P joins a bridge.  Returns the entries (read
        now if P joined a bridge) and whether this vnet's were synced."""
        tap = found.get(vn.tap)
        if tap is None:
            return entries, False   # the engine makes its TAP again and attaches anew
        p, q = found.get(vn.port.p_index), found.get(vn.port.q_index)
        if p is None or q is None or p.link != q.index or p.alias != port.port_alias(
                vid, port.PORT_END):
            # deleted, or replaced by someone: ours made again
            if p is not None and port.parse_alias(p.alias) == (vid, port.PORT_END):
                port.delete_port(self.ipr, vn.port)
            vn.port, _made = port.make_port(self.ipr, vid, tap.mtu, port.links(self.ipr))
            vn.carries = False
            self._install(vid, vn)
            self._drop_stale_devs()
        else:
            vn.port.master, vn.port.mtu = p.master, p.mtu
        if tap.mtu and vn.port.mtu != tap.mtu:
            port.set_mtu(self.ipr, vn.port, tap.mtu)
        synced = False
        if tap.master:
            joined = vn.port.master != tap.master
            if joined:
                if vn.carries:
                    vn.carries = False
                    self._write_entries(vid, vn)
                port.enslave(self.ipr, vn.port, tap.master)
                if entries is None:
                    entries = fdb.dump(self.ipr)
            if entries is not None:
                self._sync_fdb(vid, vn, entries)
                synced = True
            if not vn.carries:
                vn.carries = True
                self._write_entries(vid, vn)
        else:
            if vn.carries:
                vn.carries = False
                self._write_entries(vid, vn)
            if vn.port.master:
                port.release(self.ipr, vn.port)
        return entries, synced

    def _wanted(self, vid: VnetId) -> set[bytes]:
        return self._remote_macs.get(vid, set()) - self._local_macs.get(vid, set())

    def _sync_fdb(self, vid: VnetId, vn: _Vnet, entries: dict) -> None:
        """Every remote MAC of the vnet on P (unless the bridge knows it
        elsewhere), and nothing else of ours on P."""
        master, p = vn.port.master, vn.port.p_index
        wanted = self._wanted(vid)
        for mac in wanted:
            entry = entries.get((master, mac))
            self._place(vid, vn, mac, entry)
        for (m, mac), entry in entries.items():
            if m == master and entry.port == p and mac not in wanted and \
                    fdb.is_ours(entry, p, vn.tap):
                self._fdb_call(vid, mac, fdb.remove, self.ipr, entry)

    def _place(self, vid: VnetId, vn: _Vnet, mac: bytes, entry: fdb.FdbEntry | None) -> None:
        action = fdb.placement(entry, vn.port.p_index, vn.tap)
        if action in (fdb.ADD, fdb.MOVE):
            self._fdb_call(vid, mac, fdb.apply, self.ipr, action, vn.port.p_index, mac)

    def _fdb_call(self, vid: VnetId, mac: bytes, func, *args) -> None:
        """An fdb change; one that fails is tried again at the next refresh."""
        try:
            func(*args)
        except Exception:  # noqa: BLE001 -- NetlinkError: retried, the maps carry on
            self._retry_later(vid, mac)

    def _retry_later(self, vid: VnetId, mac: bytes) -> None:
        if len(self._fdb_retry) >= RETRY_BOUND:
            self._fdb_retry.clear()
            self._fdb_resync = True
        else:
            self._fdb_retry.add((vid, mac))

    def _follow(self, changes: dict[tuple[int, bytes], fdb.FdbEntry | None],
                skip: set[VnetId]) -> None:
        """What the bridges changed since the last refresh (but for the
        vnets in ``skip``, synced from a newer reading): our entries put
        back where the bridge lost them or moved them to the TAP's port."""
        if not changes:
            return
        by_master: dict[int, list[tuple[VnetId, _Vnet, set[bytes]]]] = {}
        for vid, vn in self._vn.items():
            if vn.carries and vn.port.master and vid not in skip:
                by_master.setdefault(vn.port.master, []).append((vid, vn, self._wanted(vid)))
        for (master, mac), entry in changes.items():
            for vid, vn, wanted in by_master.get(master, ()):
                if mac in wanted:
                    self._place(vid, vn, mac, entry)
                elif entry is not None and entry.port == vn.port.p_index and \
                        fdb.is_ours(entry, vn.port.p_index, vn.tap):
                    self._fdb_call(vid, mac, fdb.remove, self.ipr, entry)

    def _retry(self) -> None:
        retry, self._fdb_retry = self._fdb_retry, set()
        for vid, mac in retry:
            vn = self._vn.get(vid)
            if vn is not None:
                self._fdb_one(vid, vn, mac)

    def _fdb_one(self, vid: VnetId, vn: _Vnet, mac: bytes) -> None:
        """Bring one MAC's entry in line with the vnet's maps."""
        if not (vn.carries and vn.port.master):
            return
        try:
            entry = fdb.get_entry(self.ipr, vn.port.master, mac)
        except Exception:  # noqa: BLE001 -- NetlinkError: retried
            self._retry_later(vid, mac)
            return
        if mac in self._wanted(vid):
            self._place(vid, vn, mac, entry)
        elif fdb.is_ours(entry, vn.port.p_index, vn.tap):
            self._fdb_call(vid, mac, fdb.remove, self.ipr, entry)

    # -- tables -------------------------------------------------------------------------

    def set_remote(self, vid: VnetId, mac: bytes, addr: str, *, kernel_peer: bool) -> None:
        """Unicast to (vid, mac) goes to care-of ``addr``.  ``kernel_peer``:
        the receiver decapsulates in its kernel, so it may be sent GSO
        super-frames and frames whose checksum is still to be filled; False
        (a legacy host, an engine without kernel path): only frames with
        complete checksums that fit go in the kernel, the rest to the engine.
        A MAC new to the vnet also gets its static fdb entry on the vnet's
        kernel port (unless the bridge knows it on a port of its own)."""
        self._guard("set_remote", self.lib.update, self._maps["vs_remotes"],
                    maps.mac_key(vid, mac), maps.pack_remote(addr, kernel_peer), BPF_ANY)
        macs = self._remote_macs.setdefault(vid, set())
        if mac not in macs:
            macs.add(mac)
            vn = self._vn.get(vid)
            if vn is not None:
                self._fdb_one(vid, vn, mac)

    def del_remote(self, vid: VnetId, mac: bytes) -> None:
        """Forget (vid, mac) as remote; its fdb entry goes if it is ours."""
        self._guard("del_remote", self.lib.delete, self._maps["vs_remotes"],
                    maps.mac_key(vid, mac))
        self._remote_macs.get(vid, set()).discard(mac)
        vn = self._vn.get(vid)
        if vn is not None:
            self._fdb_one(vid, vn, mac)

    def set_local(self, vid: VnetId, mac: bytes) -> None:
        """A local domain's MAC the engine knows (no LocalSeen for it); an
        fdb entry of ours for it goes (a domain that migrated here: the
        bridge learns it on its vif)."""
        self._guard("set_local", self.lib.update, self._maps["vs_locals"],
                    maps.mac_key(vid, mac), maps.pack_local(), BPF_ANY)
        self._local_macs.setdefault(vid, set()).add(mac)
        vn = self._vn.get(vid)
        if vn is not None:
            self._fdb_one(vid, vn, mac)

    def del_local(self, vid: VnetId, mac: bytes) -> None:
        self._guard("del_local", self.lib.delete, self._maps["vs_locals"],
                    maps.mac_key(vid, mac))
        self._local_macs.get(vid, set()).discard(mac)
        vn = self._vn.get(vid)
        if vn is not None and mac in self._remote_macs.get(vid, ()):
            self._fdb_one(vid, vn, mac)

    def _remotes(self) -> dict[tuple[VnetId, bytes], tuple[str, bool]]:
        fd = self._maps["vs_remotes"]
        out = {}
        for k in self.lib.keys(fd, maps.MAC_KEY.size):
            raw = self.lib.lookup(fd, k, maps.REMOTE.size)
            if raw is not None:
                out[maps.unpack_mac_key(k)] = maps.unpack_remote(raw)
        return out

    def remotes(self) -> dict[tuple[VnetId, bytes], tuple[str, bool]]:
        """(vid, mac) -> (care-of address, kernel_peer), as the map holds them."""
        return self._guard("remotes", self._remotes)

    def locals(self) -> set[tuple[VnetId, bytes]]:
        return self._guard("locals", lambda: {
            maps.unpack_mac_key(k)
            for k in self.lib.keys(self._maps["vs_locals"], maps.MAC_KEY.size)})

    def remotes_used(self, keys: Iterable[MacKey]) -> dict[MacKey, int]:
        """The use stamps of the remote entries ``keys`` (one lookup each: the
        caller bounds them): the programs' clock when the decapsulator last
        took a frame from the MAC at the entry's address, written at most
        once a second, 0 when none came since the entry was written.  Only
        a change means anything to the caller.  A key not in the map is left out."""
        return self._guard("remotes_used", self._used, "vs_remotes", maps.REMOTE.size, keys)

    def locals_used(self, keys: Iterable[MacKey]) -> dict[MacKey, int]:
        """The same for local entries: when the encapsulator last took a
        frame from the MAC (on the TAP or P)."""
        return self._guard("locals_used", self._used, "vs_locals", maps.LOCAL.size, keys)

    def _used(self, name: str, size: int, keys: Iterable[MacKey]) -> dict[MacKey, int]:
        fd = self._maps[name]
        out = {}
        for vid, mac in keys:
            raw = self.lib.lookup(fd, maps.mac_key(vid, mac), size)
            if raw is not None:
                out[(vid, mac)] = maps.unpack_used(raw)
        return out

    # -- events and counters --------------------------------------------------------------

    def event_fd(self) -> int:
        """An fd that polls readable when events wait (the ring buffer's epoll fd)."""
        return self._ring.epoll_fd()

    def events(self) -> list[ShimEvent]:
        """Drain the learn events: RemoteSeen(vid, mac, addr) when the
        decapsulator saw a source MAC the remote map does not hold at that
        address, LocalSeen(vid, mac) when the encapsulator saw a source MAC
        the local map does not hold.  Rate-limited in the kernel: one event
        per (vnet, MAC, kind) per second (an LRU map of when each was last
        reported) and at most 256 per vnet per second (a window counter per
        vnet); what that holds back is counted as ``events_suppressed``, and
        records lost to a full ring buffer as ``events_lost``."""
        out = []
        for rec in self._guard("events", self._ring.drain):
            try:
                out.append(maps.unpack_event(rec))
            except maps.MapValueError:
                continue  # not a record this build writes: nothing to learn from it
        return out

    def counters(self) -> dict[VnetId, dict[str, int]]:
        """Per attached vnet: encapsulated, decapsulated, and to_user_<reason>
        for each reason a frame was left to the engine (maps.COUNTER_NAMES)."""
        def read():
            out = {}
            fd = self._maps["vs_counters"]
            for vid, (_tap, index) in self._vnets().items():
                raw = self.lib.lookup(fd, maps.index_key(index), maps.COUNTERS.size * self._cpus)
                out[vid] = maps.sum_counters(raw, self._cpus) if raw else \
                    dict.fromkeys(maps.COUNTER_NAMES, 0)
            return out
        return self._guard("counters", read)

    # -- the end ----------------------------------------------------------------------------

    def _release(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._ring.close()
        if self._watch is not None:
            self._watch.close()
        self.lib.close_object(self._obj)
        for fd in self._own_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._own_fds = []
        self.ipr.close()

    def close(self) -> None:
        """The engine stops: programs, filters, maps, kernel ports and fdb
        entries stay, so traffic between known hosts keeps flowing until the
        next engine adopts them.  A last refresh first puts back on P the
        entries the bridge moved to a TAP's port (call it after the last
        frame written into a TAP: the TAPs lose their carrier)."""
        if self._closed:
            return
        try:
            self._refresh(False)
        except Exception:  # noqa: BLE001 -- best effort: the next engine refreshes
            pass
        self._release()

    def purge(self) -> None:
        """Remove every filter of ours in this network namespace (and then
        its clsact if nothing else is on it), every kernel port of ours and
        our fdb entries, the pins, and so the maps."""
        if self._closed:
            raise KernelPathUnavailable("kernel shim closed")
        try:
            for vid, vn in list(self._vn.items()):
                self._drop_tap_entries(vid, vn)
            ports, strays = port.find_ports(port.links(self.ipr))
            for kept in ports.values():
                port.delete_port(self.ipr, kept)
            for link in strays:
                port.delete_tagged(self.ipr, link)
            self._vn.clear()
            devices = {self.underlay_ifindex}
            devices.update(tap for tap, _i in self._vnets().values())
            for link in self.ipr.get_links():
                devices.add(link["index"])
            for ifindex in sorted(devices):
                if not self._link_exists(ifindex):
                    continue
                touched = False
                for parent in (EGRESS, INGRESS):
                    touched |= self.tc.remove_ours(ifindex, parent) > 0
                if touched:
                    self.tc.drop_clsact_if_empty(ifindex)
            if self.pin_dir:
                for name in MAP_NAMES + PROGRAMS:
                    try:
                        os.unlink(os.path.join(self.pin_dir, name))
                    except FileNotFoundError:
                        pass
                try:
                    os.rmdir(self.pin_dir)
                except OSError:
                    pass
        except (TcError, LibbpfError, PortError) as e:
            raise _unavailable("purge", e) from None
        except Exception as e:  # noqa: BLE001 -- NetlinkError of an fdb call
            raise _unavailable("purge", e) from None
        finally:
            self._release()
