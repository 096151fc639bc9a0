"""KernelShim: the legacy wire's known unicast, encapsulated and
decapsulated by TC eBPF programs (bpf/vnet_shim.bpf.c), and the maps that
tell them where each MAC is.

The programs send exactly what the user-space path sends (protocol.md 2,
4.1, 4.2: UDP from and to the engine's port, checksum 0, VnetMsgHdr
``00 02 00 00``, etherip ``00 40`` and the vnet id, the frame; outer source
the care-of address, DF clear, TTL 64).  What they do not take stays with
the engine: it falls through to the TAP (egress) or to the host's UDP
socket (ingress) unchanged, and is counted per vnet under ``to_user_*``.

State lives in the kernel, not in this object: the decapsulator's tc
filter on the underlay holds its program, and the program holds every map.
``close()`` leaves them (known unicast keeps flowing while no engine
runs); the next ``open()`` in the same network namespace finds our filter
(tc.py says which filters are ours), takes the maps from the program's map
ids and loads a fresh object on those maps ("adoption").  Nothing needs a
bpffs pin for that, which matters because ``ip netns exec`` gives each
command its own /sys and so its own bpffs; with ``pin_dir`` (a directory
on a bpffs) the maps and programs are pinned there as well, for tools.
"""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass

from ....vnet_id import VnetId
from . import build, maps
from .libbpf import BPF_ANY, Libbpf, LibbpfError, RingBuffer
from .maps import LocalSeen, RemoteSeen, ShimEvent
from .tc import EGRESS, INGRESS, ROLE_DECAP, ROLE_ENCAP, TcError, TcFilters

BPF_F_INGRESS = 1
MAP_NAMES = tuple(maps.MAP_SHAPES)
PROGRAMS = ("vs_encap", "vs_decap")
# what the decapsulator uses: the maps an adoption must find (vs_taps and
# vs_locals only the encapsulators use; with no vnet attached they are empty)
DECAP_MAPS = frozenset(MAP_NAMES) - {"vs_taps", "vs_locals"}

__all__ = ["KernelPathUnavailable", "ShimConfig", "KernelShim", "ShimEvent", "RemoteSeen",
           "LocalSeen", "find_object"]


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


class KernelShim:
    """The programs, filters and maps of one engine (one network namespace)."""

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
            if adopted:
                shim._reconcile_taps()
            else:
                shim._drop_stale_encaps()
            tc.attach(ul_index, INGRESS, progs["vs_decap"], ROLE_DECAP)
            if pin_dir:
                shim._pin()
        except (TcError, LibbpfError, KernelPathUnavailable) as e:
            shim._release()
            if isinstance(e, KernelPathUnavailable):
                raise
            raise _unavailable("clsact refused" if isinstance(e, TcError) else "maps", e) \
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

    def _reconcile_taps(self) -> None:
        """After adoption: vnets whose TAP is gone lose their entries; the
        others get the freshly loaded encapsulator."""
        for vid, (tap, _index) in self._vnets().items():
            if not self._link_exists(tap):
                self._forget(vid, tap)
                continue
            if any(f.role == ROLE_ENCAP for f in self.tc.ours(tap, EGRESS)):
                self.tc.attach(tap, EGRESS, self._progs["vs_encap"], ROLE_ENCAP)
            else:
                self._forget(vid, tap)

    def _drop_stale_encaps(self) -> None:
        """A fresh load owns the namespace: encapsulators an engine of
        another layout left on TAPs (with maps nothing else reads) go."""
        for link in self.ipr.get_links():
            for f in self.tc.ours(link["index"], EGRESS):
                self.tc.remove(f)

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

    def _forget(self, vid: VnetId, tap: int) -> None:
        self.lib.delete(self._maps["vs_vnets"], maps.vid_key(vid))
        raw = self.lib.lookup(self._maps["vs_taps"], maps.tap_key(tap), maps.TAP.size)
        if raw is not None and maps.unpack_tap(raw)[0] == vid:
            self.lib.delete(self._maps["vs_taps"], maps.tap_key(tap))
        for name in ("vs_remotes", "vs_locals"):
            fd = self._maps[name]
            for k in self.lib.keys(fd, maps.MAC_KEY.size):
                if maps.unpack_mac_key(k)[0] == vid:
                    self.lib.delete(fd, k)

    def _guard(self, what: str, func, *args):
        if self._closed:
            raise KernelPathUnavailable("kernel shim closed")
        try:
            return func(*args)
        except (LibbpfError, TcError, maps.MapValueError) as e:
            raise _unavailable(what, e) from None

    # -- vnets --------------------------------------------------------------------------

    def attach(self, vid: VnetId, tap_ifindex: int) -> None:
        """Encapsulate at the TAP's egress and decapsulate the vnet's data."""
        self._guard(f"attach {vid}", self._attach, vid, tap_ifindex)

    def _attach(self, vid: VnetId, tap: int) -> None:
        current = self._vnets()
        if vid in current and current[vid][0] != tap:
            self._detach(vid)
            current = self._vnets()
        if vid in current:
            index = current[vid][1]
        else:
            used = {i for _t, i in current.values()}
            index = next((i for i in range(maps.MAX_VNETS) if i not in used), None)
            if index is None:
                raise KernelPathUnavailable(
                    f"attach {vid}: {maps.MAX_VNETS} vnets already in the kernel path")
            zero = maps.pack_counters({}) * self._cpus
            self.lib.update(self._maps["vs_counters"], maps.index_key(index), zero)
            self.lib.update(self._maps["vs_budget"], maps.index_key(index), b"\0" * 16)
        entry = maps.VnetEntry(tap, tap, BPF_F_INGRESS, index)
        self.lib.update(self._maps["vs_vnets"], maps.vid_key(vid), entry.pack())
        self.lib.update(self._maps["vs_taps"], maps.tap_key(tap), maps.pack_tap(vid, index))
        try:
            self.tc.attach(tap, EGRESS, self._progs["vs_encap"], ROLE_ENCAP)
        except TcError:
            self._forget(vid, tap)
            raise

    def detach(self, vid: VnetId) -> None:
        """Remove the vnet's filter and every map entry of it."""
        self._guard(f"detach {vid}", self._detach, vid)

    def _detach(self, vid: VnetId) -> None:
        found = self._vnets().get(vid)
        if found is None:
            return
        tap = found[0]
        if self._link_exists(tap):
            for f in self.tc.ours(tap, EGRESS):
                self.tc.remove(f)
        self._forget(vid, tap)

    def attached(self) -> dict[VnetId, int]:
        """vnet -> TAP ifindex of the vnets the kernel path carries."""
        return {vid: tap for vid, (tap, _i) in self._guard("attached", self._vnets).items()}

    # -- tables -------------------------------------------------------------------------

    def set_remote(self, vid: VnetId, mac: bytes, addr: str, *, kernel_peer: bool) -> None:
        """Unicast to (vid, mac) goes to care-of ``addr``.  ``kernel_peer``:
        the receiver decapsulates in its kernel, so it may be sent GSO
        super-frames and frames whose checksum is still to be filled; False
        (a legacy host, an engine without kernel path): only frames with
        complete checksums that fit go in the kernel, the rest to the engine."""
        self._guard("set_remote", self.lib.update, self._maps["vs_remotes"],
                    maps.mac_key(vid, mac), maps.pack_remote(addr, kernel_peer), BPF_ANY)

    def del_remote(self, vid: VnetId, mac: bytes) -> None:
        self._guard("del_remote", self.lib.delete, self._maps["vs_remotes"],
                    maps.mac_key(vid, mac))

    def set_local(self, vid: VnetId, mac: bytes) -> None:
        """A local domain's MAC the engine knows (no LocalSeen for it)."""
        self._guard("set_local", self.lib.update, self._maps["vs_locals"],
                    maps.mac_key(vid, mac), maps.pack_local(), BPF_ANY)

    def del_local(self, vid: VnetId, mac: bytes) -> None:
        self._guard("del_local", self.lib.delete, self._maps["vs_locals"],
                    maps.mac_key(vid, mac))

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
        self.lib.close_object(self._obj)
        for fd in self._own_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._own_fds = []
        self.ipr.close()

    def close(self) -> None:
        """The engine stops: programs, filters and maps stay, so traffic
        between known hosts keeps flowing until the next engine adopts them."""
        self._release()

    def purge(self) -> None:
        """Remove every filter of ours in this network namespace (and then
        its clsact if nothing else is on it), the pins, and so the maps."""
        if self._closed:
            raise KernelPathUnavailable("kernel shim closed")
        try:
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
        except (TcError, LibbpfError) as e:
            raise _unavailable("purge", e) from None
        finally:
            self._release()
