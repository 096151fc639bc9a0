"""A tiny stand-in for vnetd's control socket (design.md 6), for tests.

One request per connection: read until EOF, evaluate the forms, answer,
close.  It keeps a vnet table, records every request, and can be told to
fail a command once (``fail_next``).  ``on_add``/``on_del`` let a test
create and remove the vnet's interface (a TAP stand-in).
"""

from __future__ import annotations

import os
import socket
import threading

from xend_vnet import sxp
from xend_vnet.vnet_id import VnetId, VnetIdError


def err(errno: int, message: str) -> str:
    return sxp.to_string(["err", ["errno", str(errno)], ["message", message]])


class FakeEngine:
    def __init__(self, path: str, on_add=None, on_del=None):
        self.path = path
        self.on_add = on_add
        self.on_del = on_del
        self.vnets: dict[str, tuple[str, str]] = {}
        self.data_paths: dict[str, str] = {}     # the vnets not on the default vnetd path
        self.requests: list[str] = []
        self.fail_next: dict[str, tuple[int, str]] = {}
        self.started = 1000.0
        self.sock: socket.socket | None = None
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def start(self) -> FakeEngine:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(16)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
            self.sock = None
        if self.thread is not None:
            self.thread.join(timeout=5)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                data = b""
                try:
                    while True:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    reply = self.execute(data.decode())
                    conn.sendall(reply.encode())
                except OSError:
                    continue

    def execute(self, text: str) -> str:
        with self.lock:
            self.requests.append(text)
            out = []
            for form in sxp.parse_all(text):
                name = form[0]
                if name in self.fail_next:
                    errno, message = self.fail_next.pop(name)
                    return err(errno, message)
                try:
                    out.extend(getattr(self, "cmd_" + name.replace(".", "_"))(form))
                except AttributeError:
                    return err(22, f"unknown command {name}")
                except ValueError as e:
                    return err(22, str(e))
                except KeyError as e:
                    return err(2, str(e))
                except FileExistsError as e:
                    return err(17, str(e))
            return "".join(line + "\n" for line in out)

    def cmd_vnet_add(self, form):
        vid = VnetId.parse(sxp.child_value(form, "id"))
        if vid.canonical in self.vnets:
            raise FileExistsError(f"vnet {vid.canonical} exists")
        vnetif = sxp.child_value(form, "vnetif", vid.default_vnetif)
        security = sxp.child_value(form, "security", "none")
        if security != "none":
            raise ValueError(f"security {security} not available")
        data_path = sxp.child_value(form, "data-path", "vnetd")
        if data_path not in ("vnetd", "vxlan"):
            raise ValueError(f"invalid data-path {data_path}")
        if self.on_add:
            self.on_add(vnetif)
        self.vnets[vid.canonical] = (vnetif, security)
        if data_path != "vnetd":
            self.data_paths[vid.canonical] = data_path
        return []

    def cmd_vnet_del(self, form):
        try:
            vid = VnetId.parse(sxp.child_value(form, "id"))
        except VnetIdError as e:
            raise ValueError(str(e)) from None
        if vid.canonical not in self.vnets:
            raise KeyError(f"no vnet {vid.canonical}")
        vnetif, _ = self.vnets.pop(vid.canonical)
        self.data_paths.pop(vid.canonical, None)
        if self.on_del:
            self.on_del(vnetif)
        return []

    def cmd_vnet_list(self, form):
        return [sxp.to_string(["vnet", ["id", c], ["vnetif", i], ["security", s],
                               ["data-path", self.data_paths.get(c, "vnetd")], ["header", "0"]])
                for c, (i, s) in sorted(self.vnets.items())]

    def cmd_vif_list(self, form):
        return ["(viftable (table_ttl 60000) (entry_ttl 60000) (sweeps 0))"]

    def cmd_engine_status(self, form):
        status = (f"(engine.status (pid {os.getpid()}) (started {self.started}) "
                  f"(vnets {len(self.vnets)}))")
        return [status]

    def restart(self) -> None:
        """Lose every vnet, as a restarted vnetd does."""
        with self.lock:
            self.vnets.clear()
            self.data_paths.clear()
            self.started += 1
