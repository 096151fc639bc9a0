"""Test harness: emulated hosts in network namespaces (root only).

A ``Lab`` owns every namespace it makes (all named ``<prefix>...``) and every
process it starts, and removes them at ``close()``, also after a failure;
``Lab(prefix)`` first removes namespaces left by an earlier crashed run with
the same prefix.  The pieces:

* ``underlay()``: a namespace with a bridge ``br0`` standing for the LAN;
* ``host(name, addr)``: a namespace with ``eth0`` on that LAN, the address
  ``addr/24`` and ``224.0.0.0/4`` routed on ``eth0`` (design.md 11: needed
  for multicast between namespaces); ``connect(ns, addr)`` does the same
  for a namespace made earlier with ``netns(name)``;
* ``domain(name, host, bridge, addr)``: a namespace whose ``eth0`` is a veth
  whose peer sits in the host namespace enslaved to ``bridge``, the way Xen's
  vif-bridge script enslaves a domain's vif;
* ``start_vnetd(host, *args)``: the engine run as
  ``ip netns exec NS python -m xend_vnet.kernel_shim.daemon``, with its own
  control socket and log in the lab's temporary directory, on the lab's data
  path: ``Lab(prefix, data_path="kernel")`` makes every engine load the
  kernel path or fail (XEND_VNET_REQUIRE_KERNEL_PATH=1), ``"user"`` starts
  them with ``--no-kernel-path``, the default leaves the engine's own choice;
* ``call(ns, func)``: run a Python function inside a namespace (fork +
  setns), e.g. to talk to a control socket as a local caller would;
* ``wait_for(cond, timeout)``.

Only addresses from 192.0.2.0/24 and 10.0.0.0/8 are used, inside namespaces.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)   # also usable outside pytest (scripts, benchmarks)

from xend_vnet import sxp  # noqa: E402
from xend_vnet.engine_client import EngineClient  # noqa: E402

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/var/run/netns"
KERNEL, USER = "kernel", "user"     # a lab's data path (Lab's data_path)
REQUIRE_KERNEL_PATH = "XEND_VNET_REQUIRE_KERNEL_PATH"


def is_root() -> bool:
    return os.geteuid() == 0 and os.path.exists("/dev/net/tun")


def sh(cmd: Sequence[str], check: bool = True, timeout: float = 60,
       input: str | None = None) -> subprocess.CompletedProcess:
    """Run a command; on failure raise with its output (tests may use ip, never the product)."""
    p = subprocess.run(list(cmd), check=False, capture_output=True, text=True,
                       timeout=timeout, input=input)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
    return p


def namespaces() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def remove_namespaces(prefix: str) -> None:
    """Delete every namespace named ``prefix*`` (leftovers of a crashed run)."""
    for ns in namespaces():
        if ns.startswith(prefix):
            _stop_namespace_processes(ns)
            sh(["ip", "netns", "del", ns], check=False)


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(ns: str) -> None:
    fd = os.open(os.path.join(NETNS_DIR, ns), os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"setns {ns}: {os.strerror(e)}")
    finally:
        os.close(fd)


def socket_in_netns(ns: str, family: int = socket.AF_INET,
                    kind: int = socket.SOCK_DGRAM) -> socket.socket:
    """A socket that lives in namespace ``ns`` (sockets keep the netns they were made in)."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        _setns(ns)
        try:
            return socket.socket(family, kind)
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "cannot return to the test's namespace")
    finally:
        os.close(own)


def call_in_netns(ns: str, func: Callable, *args, timeout: float = 60):
    """Run ``func(*args)`` in a forked child that entered namespace ``ns``; return its result.

    The child is a separate process, so a daemon's SO_PEERCRED check sees a
    caller that lives in ``ns``.  Exceptions come back as RuntimeError.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            _setns(ns)
            out = ("ok", func(*args))
        except BaseException as e:  # noqa: BLE001 -- everything goes back to the parent
            out = ("err", f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        try:
            data = pickle.dumps(out)
        except Exception as e:  # noqa: BLE001 -- reported to the parent
            data = pickle.dumps(("err", f"unpicklable result: {e}"))
        with os.fdopen(w, "wb") as f:
            f.write(data)
        os._exit(0)
    os.close(w)
    deadline = time.monotonic() + timeout
    chunks = []
    with os.fdopen(r, "rb") as f:
        chunks.append(f.read())
    while True:
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise RuntimeError(f"call in {ns} timed out")
        time.sleep(0.01)
    data = b"".join(chunks)
    if not data:
        raise RuntimeError(f"call in {ns} died without a result")
    kind, value = pickle.loads(data)
    if kind == "err":
        raise RuntimeError(value)
    return value


def wait_for(cond: Callable[[], object], timeout: float = 10.0, interval: float = 0.1,
             what: str = "condition"):
    """Poll ``cond`` until it returns a true value; return it, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = cond()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 -- may fail until the system settles
            last_exc = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}"
                                 + (f" (last error: {last_exc})" if last_exc else ""))
        time.sleep(interval)


def _control_request(path: str, text: str, timeout: float) -> str:
    return EngineClient(path, timeout=timeout).request(text)


class EngineProcess:
    """A vnetd process the lab started in a host namespace (not the engine's
    own class, xend_vnet.kernel_shim.engine.Engine)."""

    def __init__(self, lab: Lab, ns: str, control: str, log_path: str,
                 proc: subprocess.Popen, args: list[str]):
        self.lab = lab
        self.ns = ns
        self.control = control
        self.log_path = log_path
        self.proc = proc
        self.args = args

    @property
    def pid(self) -> int:
        return self.proc.pid

    def request(self, text: str, timeout: float = 10.0) -> str:
        """Raw reply text to raw request text, sent from inside the host namespace."""
        return call_in_netns(self.ns, _control_request, self.control, text, timeout)

    def call(self, form) -> list:
        """Reply forms of one command; AssertionError on an (err ...) reply."""
        text = self.request(form if isinstance(form, str) else sxp.to_string(form))
        forms = sxp.parse_all(text)
        for f in forms:
            if isinstance(f, list) and f[:1] == ["err"]:
                raise AssertionError(f"{form} failed: {text}")
        return forms

    def status(self) -> dict[str, object]:
        (form,) = [f for f in self.call(["engine.status"])
                   if f[:1] in (["engine"], ["engine.status"])]
        return {c[0]: (c[1] if len(c) == 2 and isinstance(c[1], str) else c[1:])
                for c in form[1:] if isinstance(c, list)}

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; SIGKILL if it does not go.  Returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _stop_namespace_processes(ns: str, timeout: float = 5.0) -> None:
    pids = sh(["ip", "netns", "pids", ns], check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGTERM)
        except (ProcessLookupError, ValueError):
            pass
    deadline = time.monotonic() + timeout
    for pid in pids:
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


class Lab:
    """Namespaces and processes of one test run, all removed by close()."""

    open_labs: list[Lab] = []       # not yet closed (tests/conftest.py checks their engines)

    def __init__(self, prefix: str, data_path: str | None = None):
        if data_path not in (KERNEL, USER, None):
            raise ValueError(f"data path {data_path!r}: expected {KERNEL!r}, {USER!r} or None")
        self.prefix = prefix
        self.data_path = data_path
        remove_namespaces(prefix)
        self.tmp = tempfile.mkdtemp(prefix=prefix)
        self.made: list[str] = []
        self.daemons: list[EngineProcess] = []
        self.procs: list[subprocess.Popen] = []
        self.ul: str | None = None
        Lab.open_labs.append(self)

    # -- namespaces ------------------------------------------------------------

    def netns(self, name: str) -> str:
        ns = self.prefix + name
        sh(["ip", "netns", "add", ns])
        self.made.append(ns)
        self.ns_sh(ns, "ip", "link", "set", "lo", "up")
        # No IPv6 chatter (router solicitations, MLD) in counters and captures.
        self.ns_sh(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        self.ns_sh(ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
        return ns

    def ns_sh(self, ns: str, *cmd: str, check: bool = True, timeout: float = 60,
              input: str | None = None) -> subprocess.CompletedProcess:
        return sh(["ip", "netns", "exec", ns, *cmd], check=check, timeout=timeout, input=input)

    def underlay(self, name: str = "lan") -> str:
        """The LAN: a bridge ``br0`` in its own namespace."""
        ns = self.netns(name)
        self.ns_sh(ns, "ip", "link", "add", "br0", "type", "bridge")
        self.ns_sh(ns, "ip", "link", "set", "br0", "up")
        self.ul = ns
        return ns

    def host(self, name: str, addr: str, underlay: str | None = None) -> str:
        """A host namespace with eth0 = addr/24 on the LAN bridge and multicast routed."""
        ns = self.netns(name)
        self.connect(ns, addr, underlay)
        return ns

    def routed_hosts(self, router_addrs: dict[str, str],
                     hosts: dict[str, tuple[str, str]]) -> tuple[str, dict[str, str]]:
        """LANs joined by a unicast router (no multicast routing, so each group
        stays on its LAN): ``router_addrs`` maps each LAN's name to the router's
        address on it (one of 192.0.2.0/24 and 198.51.100.0/24), ``hosts`` maps
        host names to (LAN, address). Returns the router's namespace and each
        host's, with a route to the other LAN through the router."""
        lans = {name: self.underlay(name) for name in router_addrs}
        router = self.netns("r")
        for i, (lan, addr) in enumerate(router_addrs.items(), 1):
            sh(["ip", "link", "add", f"eth{i}", "netns", router, "type", "veth",
                "peer", "name", f"v-r{i}", "netns", lans[lan]])
            self.ns_sh(lans[lan], "ip", "link", "set", f"v-r{i}", "master", "br0", "up")
            self.ns_sh(router, "ip", "addr", "add", f"{addr}/24", "dev", f"eth{i}")
            self.ns_sh(router, "ip", "link", "set", f"eth{i}", "up")
        self.ns_sh(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        out = {}
        for name, (lan, addr) in hosts.items():
            ns = out[name] = self.host(name, addr, underlay=lans[lan])
            for other, other_router in router_addrs.items():
                if other != lan:
                    self.ns_sh(ns, "ip", "route", "add",
                               other_router.rsplit(".", 1)[0] + ".0/24", "via",
                               router_addrs[lan])
        return router, out

    def connect(self, ns: str, addr: str, underlay: str | None = None) -> None:
        """Put namespace ``ns`` on the LAN: eth0 = addr/24, 224.0.0.0/4 routed on it."""
        ul = underlay or self.ul
        port = f"v-{ns[len(self.prefix):]}"[:15]
        sh(["ip", "link", "add", "eth0", "netns", ns, "type", "veth",
            "peer", "name", port, "netns", ul])
        self.ns_sh(ul, "ip", "link", "set", port, "master", "br0", "up")
        self.ns_sh(ns, "ip", "addr", "add", f"{addr}/24", "dev", "eth0")
        self.ns_sh(ns, "ip", "link", "set", "eth0", "up")
        self.ns_sh(ns, "ip", "route", "add", "224.0.0.0/4", "dev", "eth0")

    def bridge(self, ns: str, name: str, *ports: str) -> None:
        """A bridge in a host namespace with ``ports`` enslaved (like vn vnet-create -b)."""
        self.ns_sh(ns, "ip", "link", "add", name, "type", "bridge")
        self.ns_sh(ns, "ip", "link", "set", name, "type", "bridge", "forward_delay", "0")
        self.ns_sh(ns, "ip", "link", "set", name, "up")
        for port in ports:
            self.enslave(ns, port, name)

    def enslave(self, ns: str, port: str, bridge: str) -> None:
        self.ns_sh(ns, "ip", "link", "set", port, "master", bridge, "up")

    def domain(self, name: str, host: str, bridge: str, addr: str,
               mac: str | None = None, mtu: int | None = None) -> str:
        """A domain namespace: eth0 = addr/24, its veth peer ``vif-<name>`` on ``bridge``."""
        ns = self.netns(name)
        vif = f"vif-{name}"[:15]
        sh(["ip", "link", "add", "eth0", "netns", ns, "type", "veth",
            "peer", "name", vif, "netns", host])
        if mac:
            self.ns_sh(ns, "ip", "link", "set", "eth0", "address", mac)
        if mtu:
            self.ns_sh(ns, "ip", "link", "set", "eth0", "mtu", str(mtu))
        self.ns_sh(ns, "ip", "addr", "add", f"{addr}/24", "dev", "eth0")
        self.ns_sh(ns, "ip", "link", "set", "eth0", "up")
        self.enslave(host, vif, bridge)
        return ns

    def move_vif(self, name: str, from_host: str, to_host: str, bridge: str) -> None:
        """Move domain ``name``'s vif to another host's bridge (a migration)."""
        vif = f"vif-{name}"[:15]
        self.ns_sh(from_host, "ip", "link", "set", vif, "netns", to_host)
        self.enslave(to_host, vif, bridge)

    def mac(self, ns: str, ifname: str = "eth0") -> str:
        return self.ns_sh(ns, "cat", f"/sys/class/net/{ifname}/address").stdout.strip()

    def link_stat(self, ns: str, ifname: str, stat: str) -> int:
        out = self.ns_sh(ns, "cat", f"/sys/class/net/{ifname}/statistics/{stat}").stdout
        return int(out)

    def master(self, ns: str, ifname: str) -> str | None:
        """The bridge ``ifname`` is enslaved to, or None."""
        out = self.ns_sh(ns, "ip", "-o", "link", "show", ifname).stdout
        words = out.split()
        return words[words.index("master") + 1] if "master" in words else None

    # -- processes -----------------------------------------------------------------

    def start_vnetd(self, ns: str, *args: str, name: str | None = None,
                    wait: bool = True, control: str | None = None,
                    require_kernel_path: bool | None = None) -> EngineProcess:
        """Start vnetd in ``ns`` (foreground, tracked); wait until its socket answers.
        ``require_kernel_path`` True or False overrides the lab's data path
        for this engine (XEND_VNET_REQUIRE_KERNEL_PATH set or not)."""
        tag = name or ns[len(self.prefix):]
        control = control or os.path.join(self.tmp, f"{tag}.sock")
        log_path = os.path.join(self.tmp, f"{tag}.log")
        cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "xend_vnet.kernel_shim.daemon",
               "--control", control, *args]
        env = dict(os.environ, PYTHONPATH=REPO)
        env.pop("VNETD_SOCKET", None)
        env.pop(REQUIRE_KERNEL_PATH, None)
        if self.data_path == USER:
            cmd.append("--no-kernel-path")
        elif self.data_path == KERNEL:
            env[REQUIRE_KERNEL_PATH] = "1"      # a kernel-path test never runs in user space
        if require_kernel_path:
            env[REQUIRE_KERNEL_PATH] = "1"
        elif require_kernel_path is False:
            env.pop(REQUIRE_KERNEL_PATH, None)
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                    cwd=REPO, start_new_session=True)
        d = EngineProcess(self, ns, control, log_path, proc, list(args))
        self.daemons.append(d)
        if wait:
            def answers():
                if proc.poll() is not None:
                    raise AssertionError(f"vnetd in {ns} exited {proc.returncode}: {d.log()}")
                return d.request("(engine.status)", timeout=2).startswith("(engine")
            wait_for(answers, timeout=20, what=f"vnetd in {ns} to answer")
        return d

    def spawn(self, ns: str, *cmd: str, **kw) -> subprocess.Popen:
        """A tracked background command in ``ns`` (killed at close)."""
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], start_new_session=True,
                                **kw)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for d in self.daemons:
            d.stop()
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        for ns in reversed(self.made):
            # Whatever still runs in a namespace of ours was started by this
            # test (a detached vnetd, say): it must not outlive the test.
            _stop_namespace_processes(ns)
            sh(["ip", "netns", "del", ns], check=False)
        self.made.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self in Lab.open_labs:
            Lab.open_labs.remove(self)
