"""Two hosts on a veth LAN, each with a vnet bridge, a TAP and a domain,
the kernel path driven by tests/kernel_shim_peer.py in each host (root).

    h1 192.0.2.1 --- lan br0 --- h2 192.0.2.2
    bridge vnet97: vnif0097 (TAP) + vif-d1        the same on h2
    d1 10.0.0.1                                    d2 10.0.0.2

With ``engine=True`` each host runs vnetd too, which makes and reads the
TAP and carries what the kernel path leaves to user space; without it the
peer holds the TAP and nothing carries that.  The domains get static
neighbour entries either way, so the tests do not wait for ARP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from netns import REPO, Lab

VID = "97"
TAP = "vnif0097"
BRIDGE = "vnet97"
PEER = os.path.join(REPO, "tests", "kernel_shim_peer.py")


class PeerProc:
    """One kernel_shim_peer.py in a host namespace."""

    def __init__(self, lab: Lab, ns: str):
        self.ns = ns
        self.proc = lab.spawn(ns, sys.executable, PEER, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, bufsize=1,
                              env=dict(os.environ, PYTHONPATH=REPO))

    def call(self, op: str, **args):
        self.proc.stdin.write(json.dumps(dict(op=op, **args)) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"kernel_shim_peer in {self.ns} died")
        reply = json.loads(line)
        if not reply["ok"]:
            raise AssertionError(f"{op} in {self.ns}: {reply}")
        return reply["result"]

    def try_call(self, op: str, **args) -> dict:
        self.proc.stdin.write(json.dumps(dict(op=op, **args)) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())


class Bed:
    def __init__(self, prefix: str = "kb", mtu: int = 1500, domain_mtu: int | None = None,
                 hosts: int = 2, engine: bool = False, engine_args: tuple = ()):
        self.lab = Lab(prefix)
        self.mtu = mtu
        try:
            self.lab.underlay()
            self.hosts, self.peers, self.domains, self.macs, self.taps = [], [], [], [], []
            for i in range(1, hosts + 1):
                h = self.lab.host(f"h{i}", f"192.0.2.{i}")
                peer = PeerProc(self.lab, h)
                if engine:
                    conf = os.path.join(self.lab.tmp, f"h{i}.conf")
                    with open(conf, "w") as f:
                        f.write(f"(vnet.add (id {VID}))\n")
                    # The peer drives this host's shim: vnetd must not load its own.
                    self.lab.start_vnetd(h, "--no-default-vnets", "--no-kernel-path",
                                         "--mtu", str(mtu), "-f", conf, *engine_args)
                    tap = peer.call("ifindex", name=TAP)
                else:
                    tap = peer.call("tap", name=TAP, mtu=mtu)
                self.lab.bridge(h, BRIDGE, TAP)
                d = self.lab.domain(f"d{i}", h, BRIDGE, f"10.0.0.{i}",
                                    mac=f"02:00:00:00:00:0{i}", mtu=domain_mtu)
                self.hosts.append(h)
                self.peers.append(peer)
                self.domains.append(d)
                self.macs.append(f"02:00:00:00:00:0{i}")
                self.taps.append(tap)
            for i, d in enumerate(self.domains):
                for j, mac in enumerate(self.macs):
                    if i != j:
                        self.lab.ns_sh(d, "ip", "neigh", "replace", f"10.0.0.{j + 1}",
                                       "lladdr", mac, "dev", "eth0", "nud", "permanent")
        except BaseException:
            self.lab.close()
            raise

    def addr(self, i: int) -> str:
        return f"192.0.2.{i + 1}"

    def open_all(self, kernel_peer: bool = True) -> None:
        for i, peer in enumerate(self.peers):
            peer.call("open", underlay="eth0", local=self.addr(i), mtu=self.mtu)
            peer.call("attach", vid=VID, tap_ifindex=self.taps[i])
            peer.call("set_local", vid=VID, mac=self.macs[i])
            for j, mac in enumerate(self.macs):
                if i != j:
                    peer.call("set_remote", vid=VID, mac=mac, addr=self.addr(j),
                              kernel_peer=kernel_peer)

    def close(self) -> None:
        self.lab.close()
