#!/usr/bin/env python3
"""Restart at scale: xend-vnet starting with many stored vnets (design.md 5).

Makes a network namespace ``xrs-h1`` (a veth underlay with 192.0.2.1/24),
runs the real vnetd in it, writes ``--vnets`` configs (default 1,000) into
a fresh store, and starts the real xend-vnet twice as its systemd unit
runs it (``start --foreground --no-engine``, ``NOTIFY_SOCKET`` set):

* ``boot``: the engine has none of the vnets and no bridge exists (a host
  that just booted);
* ``restart``: xend-vnet stopped and started again while vnetd keeps every
  vnet (the usual restart of the management server).

For each it reports, from the moment the server is launched: the socket
answering (``xend_vnets``), our ``xm vnet-list`` answered (``python3 -m
xend_vnet.xm_commands.main`` with ``XM_SERVER`` at the test socket), every
vnet up (the engine lists it, its bridge is up with the vnetif on it) and
READY=1.  ``--code DIR`` runs the daemons from another tree (a worktree of
an older commit) to compare.  Needs root and iproute2; one run at a time
(a lock file); everything it makes goes on exit, also on failure or
Ctrl-C, and it stops only the processes it started.

    python3 benchmarks/restore.py [--vnets 1000] [--code DIR] [--profile PREFIX]
                                  [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import xmlrpc.client

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from xend_vnet.config import VnetConfig  # noqa: E402
from xend_vnet.engine_client import EngineClient  # noqa: E402
from xend_vnet.httpu import server_proxy  # noqa: E402
from xend_vnet.store import VnetStore  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput import BenchError  # noqa: E402  -- the test bed's plumbing
from throughput import sh as _sh  # noqa: E402
from throughput import take_lock  # noqa: E402

PREFIX = "xrs-"
NS = PREFIX + "h1"
UNDERLAY = PREFIX + "u1"
LOCK_PATH = os.path.join(tempfile.gettempdir(), "xend-vnet-restore-benchmark.lock")
FIRST_ID = 0x1000


def sh(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """throughput.py's, with time for a thousand vnets' worth of work."""
    return _sh(*args, check=check, timeout=timeout)


def remove_namespaces() -> None:
    """Delete this benchmark's namespaces (their links and bridges go with them)."""
    for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split(" ")[0]
        if name.startswith(PREFIX):
            sh("ip", "netns", "del", name, check=False)


def vnet_ids(n: int) -> list[str]:
    return [f"{FIRST_ID + i:x}" for i in range(n)]


class RestoreBed:
    """The namespace, vnetd, the store and the xend-vnet of one run."""

    def __init__(self, code: str):
        self.code = code
        self.work = tempfile.mkdtemp(prefix=PREFIX)
        self.engine_sock = os.path.join(self.work, "vnetd.sock")
        self.sock = os.path.join(self.work, "xmlrpc.sock")
        self.state = os.path.join(self.work, "state")
        self.lock_fd: int | None = None
        self.engine: subprocess.Popen | None = None
        self.server: subprocess.Popen | None = None
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify_path = os.path.join(self.work, "notify")
        self.notify.bind(self.notify_path)

    def env(self) -> dict:
        env = dict(os.environ, PYTHONPATH=self.code,
                   XEND_CONFIG=os.path.join(self.work, "none.sxp"))
        env.pop("VNETD_SOCKET", None)
        env.pop("NOTIFY_SOCKET", None)
        return env

    def build(self, n: int) -> None:
        self.lock_fd = take_lock(LOCK_PATH, f"its {PREFIX}* namespaces are in use")
        remove_namespaces()     # leftovers of an interrupted run
        sh("ip", "netns", "add", NS)
        sh("ip", "-n", NS, "link", "set", "lo", "up")
        sh("ip", "-n", NS, "link", "add", UNDERLAY, "type", "veth", "peer", "name",
           PREFIX + "u2")
        sh("ip", "-n", NS, "link", "set", PREFIX + "u2", "up")
        sh("ip", "-n", NS, "link", "set", UNDERLAY, "up")
        sh("ip", "-n", NS, "addr", "add", "192.0.2.1/24", "dev", UNDERLAY)
        sh("ip", "-n", NS, "route", "add", "224.0.0.0/4", "dev", UNDERLAY)
        with open(os.path.join(self.work, "vnetd.log"), "wb") as log:
            self.engine = subprocess.Popen(
                ["ip", "netns", "exec", NS, sys.executable, "-m", "xend_vnet.kernel_shim.daemon",
                 "--control", self.engine_sock, "--no-default-vnets", "--device", UNDERLAY,
                 "--allow-foreign-netns"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env(),
                cwd=self.code, start_new_session=True)
        client = EngineClient(self.engine_sock, timeout=30)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.call(["engine.status"])
                break
            except Exception:  # noqa: BLE001 -- not up yet
                if time.monotonic() > deadline or self.engine.poll() is not None:
                    raise BenchError(f"vnetd did not start: {self.log('vnetd.log')}") from None
                time.sleep(0.1)
        store = VnetStore(self.state)
        for id_text in vnet_ids(n):
            store.save(VnetConfig.from_text(f"(vnet (id {id_text}))"))

    def log(self, name: str) -> str:
        try:
            with open(os.path.join(self.work, name), errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def log_count(self, text: str) -> int:
        try:
            with open(os.path.join(self.work, "xend-vnet.log"), errors="replace") as f:
                return sum(1 for line in f if text in line)
        except OSError:
            return 0

    def start_server(self, profile: str | None = None) -> float:
        """Launch xend-vnet as its unit runs it; return the launch time."""
        python = [sys.executable] + (["-m", "cProfile", "-o", profile] if profile else [])
        with open(os.path.join(self.work, "xend-vnet.log"), "ab") as log:
            t0 = time.monotonic()
            self.server = subprocess.Popen(
                ["ip", "netns", "exec", NS, *python, "-m", "xend_vnet.xmlrpc.cli",
                 "start", "--foreground", "--no-engine", "--socket", self.sock,
                 "--state-dir", self.state, "--engine-control", self.engine_sock,
                 "--reconcile-interval", "3600"],
                env=dict(self.env(), NOTIFY_SOCKET=self.notify_path), stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.code,
                start_new_session=True)
        return t0

    def stop_server(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(60)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        self.server = None

    def all_up(self, n: int) -> bool:
        """The engine lists every vnet; each bridge is up with its vnetif on it."""
        try:
            listing = EngineClient(self.engine_sock, timeout=30).call(["vnet.list"])
        except Exception:  # noqa: BLE001 -- counts as not up
            return False
        if sum(1 for f in listing if isinstance(f, list) and f[:1] == ["vnet"]) < n:
            return False
        links = json.loads(sh("ip", "-n", NS, "-j", "link", "show").stdout)
        by_name = {link["ifname"]: link for link in links}
        for id_text in vnet_ids(n):
            bridge = by_name.get(f"vnet{id_text}")
            tap = by_name.get(f"vnif{int(id_text, 16):04x}")
            if not (bridge and tap and tap.get("master") == bridge["ifname"]
                    and "UP" in bridge.get("flags", [])):
                return False
        return True

    def close(self) -> None:
        self.stop_server()
        if self.engine is not None and self.engine.poll() is None:
            self.engine.send_signal(signal.SIGTERM)
            try:
                self.engine.wait(30)
            except subprocess.TimeoutExpired:
                self.engine.kill()
                self.engine.wait()
        if self.lock_fd is not None:       # never another run's namespaces
            remove_namespaces()
            os.close(self.lock_fd)
            self.lock_fd = None
        self.notify.close()
        shutil.rmtree(self.work, ignore_errors=True)


def _first_answer(bed: RestoreBed, t0: float, out: dict, stop: threading.Event) -> None:
    proxy = server_proxy(f"httpu://{bed.sock}", timeout=120)
    while not stop.is_set():
        try:
            proxy.xend_vnets()
        except (OSError, xmlrpc.client.Error):
            time.sleep(0.01)
            continue
        out["socket_s"] = time.monotonic() - t0
        return


def _xm_list(bed: RestoreBed, t0: float, n: int, out: dict, stop: threading.Event) -> None:
    env = dict(bed.env(), XM_SERVER=f"httpu://{bed.sock}")
    # An operator runs xm once; a loop of xm processes from the launch would
    # take the CPU the starting server needs, so wait for its socket file.
    while not os.path.exists(bed.sock) and not stop.is_set():
        time.sleep(0.01)
    while not stop.is_set():
        done = subprocess.run([sys.executable, "-m", "xend_vnet.xm_commands.main", "vnet-list"],
                              env=env, cwd=bed.code, capture_output=True, text=True,
                              timeout=300)
        if done.returncode == 0 and len(done.stdout.split()) >= n:
            out["xm_list_s"] = time.monotonic() - t0
            return
        time.sleep(0.01)


def _all_up(bed: RestoreBed, t0: float, n: int, out: dict, stop: threading.Event) -> None:
    while not stop.is_set():
        if bed.all_up(n):
            out["all_up_s"] = time.monotonic() - t0
            return
        time.sleep(0.5)     # each look reads 2n links and the engine's listing


def measure_start(bed: RestoreBed, n: int, timeout: float, profile: str | None = None) -> dict:
    """Start xend-vnet and time the four events from its launch."""
    out: dict = {}
    stop = threading.Event()
    bed.notify.setblocking(False)
    try:
        while bed.notify.recv(100):     # STOPPING=1 of the previous start
            pass
    except BlockingIOError:
        pass
    logged_before = bed.log_count("restored vnet")
    t0 = bed.start_server(profile)
    watchers = [threading.Thread(target=f, args=args, daemon=True) for f, args in (
        (_first_answer, (bed, t0, out, stop)), (_xm_list, (bed, t0, n, out, stop)),
        (_all_up, (bed, t0, n, out, stop)))]
    for w in watchers:
        w.start()
    try:
        while "ready_s" not in out:
            bed.notify.settimeout(max(0.01, t0 + timeout - time.monotonic()))
            if bed.notify.recv(100) == b"READY=1":
                out["ready_s"] = time.monotonic() - t0
    except TimeoutError:
        pass
    for w in watchers:
        w.join(max(1.0, t0 + timeout - time.monotonic()))
    stop.set()
    # How far the restore got: one "restored vnet" line per vnet at a start.
    out["restored_logged"] = bed.log_count("restored vnet") - logged_before
    if bed.server is not None and bed.server.poll() is not None:
        raise BenchError(f"xend-vnet exited: {bed.log('xend-vnet.log')}")
    return out


def run(n: int, code: str, timeout: float, profile: str | None = None) -> dict:
    bed = RestoreBed(code)
    try:
        bed.build(n)
        boot = measure_start(bed, n, timeout, profile and profile + "-boot.prof")
        bed.stop_server()
        restart = measure_start(bed, n, timeout, profile and profile + "-restart.prof")
        return {"vnets": n, "code": code, "boot": boot, "restart": restart}
    finally:
        bed.close()


def report(r: dict) -> str:
    lines = [f"# {r['vnets']} stored vnets, code in {r['code']}",
             f"{'':10} {'socket':>9} {'xm list':>9} {'all up':>9} {'READY':>9} {'restored':>9}"]
    for phase in ("boot", "restart"):
        cells = [r[phase].get(k) for k in ("socket_s", "xm_list_s", "all_up_s", "ready_s")]
        lines.append(f"{phase:10} " + " ".join(
            f"{c:>8.2f}s" if c is not None else f"{'-':>9}" for c in cells)
            + f" {r[phase]['restored_logged']:>9}")
    lines.append("(-: not within the timeout; restored: vnets the server logged as restored)")
    return "\n".join(lines)


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")     # the finally clauses clean up


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vnets", type=int, default=1000)
    p.add_argument("--code", default=REPO, help="run vnetd and xend-vnet from this tree")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds to wait for READY=1 in each phase")
    p.add_argument("--profile", metavar="PREFIX",
                   help="run xend-vnet under cProfile: PREFIX-boot.prof, PREFIX-restart.prof")
    p.add_argument("--json", metavar="FILE")
    opts = p.parse_args(argv)
    if os.geteuid() != 0:
        print("restore.py: needs root (network namespaces)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        r = run(opts.vnets, os.path.abspath(opts.code), opts.timeout,
              opts.profile and os.path.abspath(opts.profile))
    except KeyboardInterrupt:
        print("restore.py: interrupted; everything it made is removed", file=sys.stderr)
        return 130
    except BenchError as e:
        print(f"restore.py: {e}", file=sys.stderr)
        return 1
    print(report(r))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
