"""The few libbpf calls the kernel data path needs, through ctypes.

libbpf.so.1 (Debian's libbpf1) opens and loads the compiled object; the
rest are thin wrappers of the bpf() system call that libbpf exports (map
elements, ids and info, pins) and its ring buffer consumer.  Every failure
raises ``LibbpfError`` with errno and a one-line message; while an object
loads, libbpf's own messages (the verifier's among them) are kept so a
refused program says why.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as errno_mod
import os
import threading

LIBRARY = "libbpf.so.1"

BPF_ANY = 0
BPF_NOEXIST = 1

# struct bpf_prog_info and struct bpf_map_info (linux/bpf.h): the offsets
# of the fields read here; the rest of the buffer stays zero, as the kernel
# requires of fields it does not know.
INFO_SIZE = 256
PROG_INFO_NR_MAP_IDS = 52
PROG_INFO_MAP_IDS = 56
PROG_INFO_NAME = 64
MAP_INFO_ID = 4
MAP_INFO_KEY_SIZE = 8
MAP_INFO_VALUE_SIZE = 12
MAP_INFO_MAX_ENTRIES = 16
MAP_INFO_NAME = 24
OBJ_NAME_LEN = 16


class LibbpfError(OSError):
    """A libbpf call failed: errno and what was being done."""


_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_SAMPLE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


class Libbpf:
    """libbpf.so.1, loaded once per process (``Libbpf.get()``)."""

    _instance: Libbpf | None = None
    _lock = threading.Lock()

    def __init__(self, name: str = LIBRARY):
        try:
            self.lib = ctypes.CDLL(name, use_errno=True)
        except OSError as e:
            raise LibbpfError(errno_mod.ENOENT, f"libbpf missing: {e}") from None
        self.libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        L = self.lib
        vp, ci, cu, cs = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_char_p
        sig = {
            "bpf_object__open_file": (vp, [cs, vp]),
            "bpf_object__load": (ci, [vp]),
            "bpf_object__close": (None, [vp]),
            "bpf_object__find_program_by_name": (vp, [vp, cs]),
            "bpf_program__fd": (ci, [vp]),
            "bpf_object__find_map_by_name": (vp, [vp, cs]),
            "bpf_map__fd": (ci, [vp]),
            "bpf_map__reuse_fd": (ci, [vp, ci]),
            "bpf_map_update_elem": (ci, [ci, vp, vp, ctypes.c_uint64]),
            "bpf_map_lookup_elem": (ci, [ci, vp, vp]),
            "bpf_map_delete_elem": (ci, [ci, vp]),
            "bpf_map_get_next_key": (ci, [ci, vp, vp]),
            "bpf_prog_get_fd_by_id": (ci, [cu]),
            "bpf_map_get_fd_by_id": (ci, [cu]),
            "bpf_obj_get_info_by_fd": (ci, [ci, vp, ctypes.POINTER(cu)]),
            "bpf_obj_pin": (ci, [ci, cs]),
            "bpf_obj_get": (ci, [cs]),
            "ring_buffer__new": (vp, [ci, _SAMPLE_FN, vp, vp]),
            "ring_buffer__poll": (ci, [vp, ci]),
            "ring_buffer__consume": (ci, [vp]),
            "ring_buffer__epoll_fd": (ci, [vp]),
            "ring_buffer__free": (None, [vp]),
            "libbpf_set_print": (vp, [_PRINT_FN]),
            "libbpf_num_possible_cpus": (ci, []),
        }
        for fname, (res, args) in sig.items():
            f = getattr(L, fname)
            f.restype = res
            f.argtypes = args
        self.libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
                                        ctypes.c_void_p]
        self.libc.vsnprintf.restype = ctypes.c_int
        self.messages: list[str] = []
        self._print = _PRINT_FN(self._on_print)
        L.libbpf_set_print(self._print)

    @classmethod
    def get(cls) -> Libbpf:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _on_print(self, level: int, fmt: bytes, args: int) -> int:
        buf = ctypes.create_string_buffer(4096)
        self.libc.vsnprintf(buf, len(buf), fmt, args)
        if len(self.messages) < 5000:
            self.messages.append(buf.value.decode("utf-8", "replace"))
        return 0

    # -- errors ---------------------------------------------------------------------

    @staticmethod
    def _raise(rc: int, what: str) -> None:
        e = -rc if rc < 0 else (ctypes.get_errno() or errno_mod.EINVAL)
        raise LibbpfError(e, f"{what}: {os.strerror(e)}")

    def _check(self, rc: int, what: str) -> int:
        if rc < 0:
            self._raise(rc, what)
        return rc

    # -- objects --------------------------------------------------------------------

    def open_file(self, path: str) -> int:
        ctypes.set_errno(0)
        obj = self.lib.bpf_object__open_file(os.fsencode(path), None)
        if not obj:
            self._raise(0, f"cannot open {path}")
        return obj

    def load(self, obj: int) -> None:
        """Load every program and create the maps; on refusal the error holds
        libbpf's last messages (the verifier's log ends with its reason)."""
        start = len(self.messages)
        rc = self.lib.bpf_object__load(obj)
        if rc < 0:
            log = [m.strip() for m in self.messages[start:] if m.strip()]
            detail = " | ".join(log[-3:]) if log else ""
            e = -rc
            raise LibbpfError(e, f"load refused: {os.strerror(e)}"
                              + (f": {detail}" if detail else ""))

    def close_object(self, obj: int) -> None:
        self.lib.bpf_object__close(obj)

    def program_fd(self, obj: int, name: str) -> int:
        prog = self.lib.bpf_object__find_program_by_name(obj, name.encode())
        if not prog:
            raise LibbpfError(errno_mod.ENOENT, f"no program {name} in the object")
        return self._check(self.lib.bpf_program__fd(prog), f"program {name}")

    def find_map(self, obj: int, name: str) -> int:
        m = self.lib.bpf_object__find_map_by_name(obj, name.encode())
        if not m:
            raise LibbpfError(errno_mod.ENOENT, f"no map {name} in the object")
        return m

    def map_fd(self, bpf_map: int) -> int:
        return self._check(self.lib.bpf_map__fd(bpf_map), "map fd")

    def reuse_map(self, bpf_map: int, fd: int) -> None:
        self._check(self.lib.bpf_map__reuse_fd(bpf_map, fd), "reuse map")

    # -- map elements ---------------------------------------------------------------

    def update(self, fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        rc = self.lib.bpf_map_update_elem(fd, key, value, flags)
        if rc < 0:
            self._raise(rc, "map update")

    def lookup(self, fd: int, key: bytes, value_size: int) -> bytes | None:
        buf = ctypes.create_string_buffer(value_size)
        rc = self.lib.bpf_map_lookup_elem(fd, key, buf)
        if rc < 0:
            e = -rc
            if e == errno_mod.ENOENT:
                return None
            self._raise(rc, "map lookup")
        return buf.raw

    def delete(self, fd: int, key: bytes) -> bool:
        """Delete ``key``; False when it was not there."""
        rc = self.lib.bpf_map_delete_elem(fd, key)
        if rc < 0:
            if -rc == errno_mod.ENOENT:
                return False
            self._raise(rc, "map delete")
        return True

    def keys(self, fd: int, key_size: int) -> list[bytes]:
        out = []
        cur = None
        nxt = ctypes.create_string_buffer(key_size)
        while True:
            rc = self.lib.bpf_map_get_next_key(fd, cur, nxt)
            if rc < 0:
                if -rc == errno_mod.ENOENT:
                    return out
                self._raise(rc, "map keys")
            out.append(nxt.raw)
            cur = ctypes.create_string_buffer(nxt.raw, key_size)

    def possible_cpus(self) -> int:
        return self._check(self.lib.libbpf_num_possible_cpus(), "possible cpus")

    # -- ids, info, pins ------------------------------------------------------------

    def prog_fd_by_id(self, prog_id: int) -> int:
        return self._check(self.lib.bpf_prog_get_fd_by_id(prog_id), f"program id {prog_id}")

    def map_fd_by_id(self, map_id: int) -> int:
        return self._check(self.lib.bpf_map_get_fd_by_id(map_id), f"map id {map_id}")

    def _info(self, fd: int, buf) -> None:
        size = ctypes.c_uint32(len(buf))
        self._check(self.lib.bpf_obj_get_info_by_fd(fd, buf, ctypes.byref(size)), "object info")

    def prog_map_ids(self, fd: int) -> tuple[str, list[int]]:
        """A program's name and the ids of the maps it uses."""
        buf = ctypes.create_string_buffer(INFO_SIZE)
        self._info(fd, buf)
        n = int.from_bytes(buf.raw[PROG_INFO_NR_MAP_IDS:PROG_INFO_NR_MAP_IDS + 4], "little")
        ids = (ctypes.c_uint32 * max(n, 1))()
        buf = ctypes.create_string_buffer(INFO_SIZE)
        ctypes.memmove(ctypes.byref(buf, PROG_INFO_NR_MAP_IDS),
                       n.to_bytes(4, "little"), 4)
        ctypes.memmove(ctypes.byref(buf, PROG_INFO_MAP_IDS),
                       ctypes.addressof(ids).to_bytes(8, "little"), 8)
        self._info(fd, buf)
        name = buf.raw[PROG_INFO_NAME:PROG_INFO_NAME + OBJ_NAME_LEN].split(b"\0", 1)[0]
        return name.decode(errors="replace"), list(ids)[:n]

    def map_info(self, fd: int) -> dict[str, object]:
        buf = ctypes.create_string_buffer(INFO_SIZE)
        self._info(fd, buf)
        raw = buf.raw

        def u32(off: int) -> int:
            return int.from_bytes(raw[off:off + 4], "little")
        return {
            "id": u32(MAP_INFO_ID),
            "key_size": u32(MAP_INFO_KEY_SIZE),
            "value_size": u32(MAP_INFO_VALUE_SIZE),
            "max_entries": u32(MAP_INFO_MAX_ENTRIES),
            "name": raw[MAP_INFO_NAME:MAP_INFO_NAME + OBJ_NAME_LEN].split(b"\0", 1)[0].decode(
                errors="replace"),
        }

    def pin(self, fd: int, path: str) -> None:
        self._check(self.lib.bpf_obj_pin(fd, os.fsencode(path)), f"pin {path}")

    def get_pinned(self, path: str) -> int:
        return self._check(self.lib.bpf_obj_get(os.fsencode(path)), f"pinned {path}")


class RingBuffer:
    """A consumer of one BPF ring buffer map: ``epoll_fd()`` for an event
    loop, ``drain()`` for the records waiting."""

    def __init__(self, lib: Libbpf, map_fd: int):
        self.lib = lib
        self._pending: list[bytes] = []

        def sample(_ctx, data, size):
            self._pending.append(ctypes.string_at(data, size))
            return 0
        self._cb = _SAMPLE_FN(sample)
        ctypes.set_errno(0)
        rb = lib.lib.ring_buffer__new(map_fd, self._cb, None, None)
        if not rb:
            lib._raise(0, "ring buffer")
        self._rb = rb

    def epoll_fd(self) -> int:
        return self.lib.lib.ring_buffer__epoll_fd(self._rb)

    def drain(self) -> list[bytes]:
        if self._rb:
            rc = self.lib.lib.ring_buffer__consume(self._rb)
            if rc < 0:
                self.lib._raise(rc, "ring buffer consume")
        out, self._pending = self._pending, []
        return out

    def close(self) -> None:
        if self._rb:
            self.lib.lib.ring_buffer__free(self._rb)
            self._rb = None
