"""Test bed for the EVPN control plane (docs/fleet.md): subnets joined by a
router that does not route multicast, route reflectors and hosts, each a
network namespace running real FRR daemons (zebra, bgpd); hosts also run
xend-vnet, which launches vnetd with the options of their xend-config.sxp.

Used by tests/test_e2e_evpn.py and benchmarks/evpn_fleet.py (root only).

* ``EvpnLab(prefix, subnets)``: the namespaces of ``netns.Lab`` plus one LAN
  per subnet and the router (``.254`` on each), hosts reaching other
  subnets only through their default route;
* ``reflector(name, subnet, last)`` / ``host(name, subnet, last)``: a node
  whose xend-config.sxp carries its EVPN keys; ``FrrNode.start_frr`` writes
  FRR's configuration with ``xend-vnet evpn-config`` (the product's
  command, under the node's own root) and runs zebra and bgpd in the
  namespace with explicit paths, the configuration applied with vtysh as
  FRR's service does; ``EvpnHost.start_server`` runs xend-vnet;
* every daemon is stopped by its pid file at ``close`` (also after a
  failure), then the namespaces go.

Addresses: subnets 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24 and 10.x/24;
domains live in 10.<vnet>.0.0/16 inside namespaces only.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from netns import REPO, Lab, call_in_netns, wait_for

FRR_BIN = "/usr/lib/frr"
VTYSH = "/usr/bin/vtysh"
ASN = 65000
SUBNETS = ("192.0.2", "198.51.100", "203.0.113", "10.99.4", "10.99.5", "10.99.6",
           "10.99.7", "10.99.8")
ROUTER = 254          # the router's address on every subnet
DAEMONS = ("zebra", "bgpd")


def frr_available() -> bool:
    return all(os.access(os.path.join(FRR_BIN, d), os.X_OK) for d in DAEMONS) \
        and os.access(VTYSH, os.X_OK)


def _frr_ids() -> tuple[int, int]:
    return pwd.getpwnam("frr").pw_uid, grp.getgrnam("frr").gr_gid


def product(*args: str) -> list[str]:
    """A command of the product, run from this tree."""
    return [sys.executable, "-m", "xend_vnet.xmlrpc.cli", *args]


@dataclass
class Daemon:
    name: str
    pid_file: str
    proc: subprocess.Popen


class FrrNode:
    """A namespace with FRR: a reflector, or the FRR half of a host."""

    def __init__(self, lab: EvpnLab, name: str, ns: str, address: str, subnet: str):
        self.lab = lab
        self.name = name
        self.ns = ns
        self.address = address
        self.subnet = subnet
        self.dir = os.path.join(lab.tmp, name)
        self.rundir = os.path.join(self.dir, "run")       # pid files, sockets
        self.root = os.path.join(self.dir, "root")        # evpn-config writes root/etc/frr
        self.config = os.path.join(self.dir, "xend-config.sxp")
        self.daemons: dict[str, Daemon] = {}
        uid, gid = _frr_ids()
        for d in (self.rundir, os.path.join(self.root, "etc", "frr")):
            os.makedirs(d, exist_ok=True)
            os.chown(d, uid, gid)
        self.empty = os.path.join(self.rundir, "empty.conf")
        with open(self.empty, "w"):
            pass
        os.chmod(self.empty, 0o644)

    @property
    def frr_conf(self) -> str:
        return os.path.join(self.root, "etc", "frr", "frr.conf")

    def write_config(self, text: str) -> None:
        with open(self.config, "w") as f:
            f.write(text)

    def evpn_config(self) -> str:
        """``xend-vnet evpn-config`` for this node: what it printed."""
        done = subprocess.run(product("evpn-config", "--config", self.config, "--root",
                                      self.root), capture_output=True, text=True,
                              env=self.lab.env, timeout=60)
        if done.returncode != 0:
            raise AssertionError(f"evpn-config for {self.name}: {done.stderr}")
        return done.stdout

    def start_frr(self, configure: bool = True, wait: bool = True) -> float:
        """zebra, then bgpd, then the configuration through vtysh; returns the
        time the last daemon was started (time.monotonic())."""
        if configure:
            self.evpn_config()
        for name in DAEMONS:
            self._start(name)
            if wait:
                wait_for(lambda n=name: os.path.exists(os.path.join(self.rundir, f"{n}.vty")),
                         timeout=20, interval=0.02, what=f"{name} of {self.name}")
        started = time.monotonic()
        if wait:
            self.apply_config()
        return started

    def _start(self, name: str) -> None:
        pid_file = os.path.join(self.rundir, f"{name}.pid")
        log = os.path.join(self.rundir, f"{name}.log")
        for left in (pid_file, os.path.join(self.rundir, f"{name}.vty")):
            # an earlier run's: waiting for the socket must wait for this one's
            if os.path.exists(left):
                os.unlink(left)
        cmd = ["ip", "netns", "exec", self.ns, os.path.join(FRR_BIN, name),
               "-f", self.empty, "-i", pid_file, "-z", os.path.join(self.rundir, "zserv.api"),
               "--vty_socket", self.rundir, "-P", "0", "--log", f"file:{log}"]
        if name == "zebra":
            cmd += ["-s", "16777216"]       # netlink buffer for bursts of FDB changes
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        self.daemons[name] = Daemon(name, pid_file, proc)

    def apply_config(self) -> None:
        """What FRR's service does with the integrated frr.conf (vtysh -b)."""
        done = self.lab.lab.ns_sh(self.ns, VTYSH, "--vty_socket", self.rundir, "-f",
                                  self.frr_conf, check=False, timeout=60)
        running = self.vtysh("show running-config")
        if done.returncode != 0 or "router bgp" not in running:
            raise AssertionError(f"vtysh -f {self.frr_conf} in {self.name}: "
                                 f"{done.stdout}{done.stderr}{running}")

    def stop_frr(self, kill: bool = False) -> None:
        """Every FRR daemon of this node, by its pid file (SIGKILL with ``kill``)."""
        for name in reversed(list(self.daemons)):
            d = self.daemons.pop(name)
            pid = None
            try:
                with open(d.pid_file) as f:
                    pid = int(f.read().strip() or 0)
            except (OSError, ValueError):
                pass
            # The pid file names the daemon we started (ip netns exec execs it).
            target = pid if pid == d.proc.pid else d.proc.pid
            if d.proc.poll() is None:
                os.kill(target, signal.SIGKILL if kill else signal.SIGTERM)
                try:
                    d.proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.kill(target, signal.SIGKILL)
                    d.proc.wait(10)

    def frr_running(self) -> bool:
        return bool(self.daemons) and all(d.proc.poll() is None for d in self.daemons.values())

    def vtysh(self, command: str) -> str:
        return self.lab.lab.ns_sh(self.ns, VTYSH, "--vty_socket", self.rundir, "-c", command,
                                  timeout=30).stdout

    def vtysh_json(self, command: str):
        return json.loads(self.vtysh(command) or "{}")

    def established(self) -> int:
        """BGP sessions up in the l2vpn evpn family."""
        summary = self.vtysh_json("show bgp l2vpn evpn summary json")
        peers = summary.get("peers", {})
        return sum(1 for p in peers.values() if p.get("state") == "Established")


class EvpnHost(FrrNode):
    """A host: FRR, xend-vnet and the vnetd xend-vnet launches."""

    def __init__(self, lab: EvpnLab, name: str, ns: str, address: str, subnet: str):
        super().__init__(lab, name, ns, address, subnet)
        self.engine_sock = os.path.join(self.dir, "vnetd.sock")
        self.xend_sock = os.path.join(self.dir, "xmlrpc.sock")
        self.state = os.path.join(self.dir, "state")
        self.server: subprocess.Popen | None = None
        self.env = dict(lab.env, VNETD_SOCKET=self.engine_sock,
                        XM_SERVER=f"httpu://{self.xend_sock}", XEND_CONFIG=self.config)

    def start_server(self, interval: float = 0.5, wait: bool = True) -> None:
        """xend-vnet in the foreground; it starts vnetd with the EVPN options."""
        log = open(os.path.join(self.dir, "xend-vnet.log"), "ab")
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, *product(
                "start", "--foreground", "--config", self.config, "--socket", self.xend_sock,
                "--state-dir", self.state, "--engine-control", self.engine_sock,
                "--reconcile-interval", str(interval))],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        if wait:
            self.wait_server()

    def wait_server(self, timeout: float = 120) -> None:
        """Until xend-vnet answers and the vnetd it launched does."""
        def answers():
            if self.server.poll() is not None:
                raise AssertionError(f"xend-vnet in {self.name} exited: {self.server_log()}")
            return (self.xm("vnet-list").returncode == 0
                    and self.vn("status").returncode == 0)
        wait_for(answers, timeout=timeout, interval=0.2,
                 what=f"xend-vnet and vnetd of {self.name}")

    def server_log(self) -> str:
        try:
            with open(os.path.join(self.dir, "xend-vnet.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def engine_log(self) -> str:
        try:
            with open(self.engine_sock + ".log", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop_server(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(30)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()

    def engine_pid(self) -> int | None:
        try:
            with open(self.engine_sock + ".pid") as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def stop_engine(self) -> None:
        """The vnetd xend-vnet launched, by its pid file."""
        pid = self.engine_pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.05)

    def run(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.ns, *cmd], env=self.env,
                              cwd=self.dir, capture_output=True, text=True, timeout=timeout)

    def xm(self, *args: str) -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-m", "xend_vnet.xm_commands.main", *args)

    def vn(self, *args: str) -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-m", "xend_vnet.vn", *args)

    def create_vnet(self, vnet: int) -> None:
        """``xm vnet-create`` of a vxlan vnet with bridge vnet<hex id>."""
        path = os.path.join(self.dir, f"vnet{vnet:x}.sxp")
        with open(path, "w") as f:
            f.write(vnet_config(vnet))
        done = self.xm("vnet-create", path)
        if done.returncode != 0:
            raise AssertionError(f"xm vnet-create {vnet:x} on {self.name}: {done.stderr}")

    def fdb(self, vnet: int):
        """The vnet device's forwarding table, read through netlink in the namespace."""
        return call_in_netns(self.ns, _read_fdb, vnif(vnet))


def vnet_config(vnet: int) -> str:
    return f"(vnet (id {vnet:x}) (bridge {bridge(vnet)}) (data-path vxlan))\n"


def bridge(vnet: int) -> str:
    return f"vnet{vnet:x}"


def vnif(vnet: int) -> str:
    return f"vnif{vnet:04x}"


def _read_fdb(ifname: str):
    sys.path.insert(0, REPO)
    from xend_vnet.vn.links import read_vxlan_fdb
    return read_vxlan_fdb([ifname]).get(ifname)


def host_xend_config(address: str, reflectors: list[str], password_file: str | None = None,
                     extra: str = "") -> str:
    lines = ["(xend-vnet-control-plane evpn)", f"(xend-vnet-evpn-address {address})",
             f"(xend-vnet-evpn-as {ASN})",
             f"(xend-vnet-evpn-reflectors {' '.join(reflectors)})",
             "(xend-vnet-evpn-connect-retry 1)"]
    if password_file:
        lines.append(f"(xend-vnet-evpn-password-file {password_file})")
    return "\n".join(lines) + "\n" + extra


def reflector_xend_config(address: str, listen: list[str], reflectors: list[str],
                          password_file: str | None = None, extra: str = "") -> str:
    lines = [f"(xend-vnet-evpn-address {address})", f"(xend-vnet-evpn-as {ASN})",
             f"(xend-vnet-evpn-listen {' '.join(listen)})", "(xend-vnet-evpn-connect-retry 1)"]
    if reflectors:
        lines.append(f"(xend-vnet-evpn-reflectors {' '.join(reflectors)})")
    if password_file:
        lines.append(f"(xend-vnet-evpn-password-file {password_file})")
    return "\n".join(lines) + "\n" + extra


class EvpnLab:
    """Subnets, a router, reflectors and hosts; ``close`` undoes all of it."""

    def __init__(self, prefix: str, subnets: int):
        if not 1 <= subnets <= len(SUBNETS):
            raise ValueError(f"1 to {len(SUBNETS)} subnets")
        self.lab = Lab(prefix)
        self.tmp = self.lab.tmp
        os.chmod(self.tmp, 0o755)          # FRR's user reaches its run directories
        self.env = dict(os.environ, PYTHONPATH=REPO)
        self.env.pop("VNETD_SOCKET", None)
        self.subnets = [SUBNETS[i] for i in range(subnets)]
        self.nodes: list[FrrNode] = []
        self.lans: dict[str, str] = {}
        try:
            self._underlay()
        except BaseException:
            self.lab.close()
            raise

    def _underlay(self) -> None:
        """The router (forwarding, no multicast routing) and one LAN per subnet."""
        self.router = self.lab.netns("r")
        self.lab.ns_sh(self.router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for i, subnet in enumerate(self.subnets):
            lan = self.lab.netns(f"l{i}")
            self.lab.ns_sh(lan, "ip", "link", "add", "br0", "type", "bridge")
            self.lab.ns_sh(lan, "ip", "link", "set", "br0", "up")
            self.lans[subnet] = lan
            sh_ = self.lab.ns_sh
            subprocess.run(["ip", "link", "add", f"eth{i}", "netns", self.router, "type",
                            "veth", "peer", "name", "v-r", "netns", lan], check=True)
            sh_(lan, "ip", "link", "set", "v-r", "master", "br0", "up")
            sh_(self.router, "ip", "addr", "add", f"{subnet}.{ROUTER}/24", "dev", f"eth{i}")
            sh_(self.router, "ip", "link", "set", f"eth{i}", "up")

    def _node_ns(self, name: str, subnet: str, last: int) -> tuple[str, str]:
        ns = self.lab.netns(name)
        address = f"{subnet}.{last}"
        self.lab.connect(ns, address, underlay=self.lans[subnet])
        self.lab.ns_sh(ns, "ip", "route", "add", "default", "via", f"{subnet}.{ROUTER}")
        return ns, address

    def reflector(self, name: str, subnet: str, last: int) -> FrrNode:
        ns, address = self._node_ns(name, subnet, last)
        node = FrrNode(self, name, ns, address, subnet)
        self.nodes.append(node)
        return node

    def host(self, name: str, subnet: str, last: int) -> EvpnHost:
        ns, address = self._node_ns(name, subnet, last)
        node = EvpnHost(self, name, ns, address, subnet)
        self.nodes.append(node)
        return node

    def listen_ranges(self) -> list[str]:
        return [f"{s}.0/24" for s in self.subnets]

    def password_file(self, password: str) -> str:
        path = os.path.join(self.tmp, "bgp.password")
        with open(path, "w") as f:
            f.write(password + "\n")
        os.chmod(path, 0o600)
        return path

    def close(self) -> None:
        """FRR daemons first (by their pid files), then xend-vnet and vnetd, then
        the namespaces; each step runs whatever the previous one raised."""
        errors = []
        for node in self.nodes:
            try:
                node.stop_frr()
            except Exception as e:  # noqa: BLE001 -- the rest is still cleaned
                errors.append(e)
        for node in self.nodes:
            if isinstance(node, EvpnHost):
                try:
                    node.stop_server()
                    node.stop_engine()
                except Exception as e:  # noqa: BLE001 -- the rest is still cleaned
                    errors.append(e)
        self.lab.close()
        if errors:
            raise errors[0]
