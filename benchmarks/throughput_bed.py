"""The test bed of benchmarks/throughput.py (and latency.py): namespaces,
links, engines, the legacy daemon, captures and the plumbing every
benchmark shares.

Namespaces ``xvb-*``: two hosts joined by a veth underlay (192.0.2.1 and
192.0.2.2, multicast routed on the link) and two domains, each domain wired
to its host like Xen's vif-bridge does: one veth on the host's VXLAN bridge
(10.42.0.0/24) and one on each vnet bridge, whose other port is the TAP of
the engine (or of the legacy daemon) for that vnet.  The benchmark uses
``ip``, ``ethtool`` and ``tcpdump`` itself; the product never does.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import capture_check  # noqa: E402  -- what a capture of the underlay carried
import legacy_vnetd  # noqa: E402

PREFIX = "xvb-"
H1, H2, D1, D2 = (PREFIX + n for n in ("h1", "h2", "d1", "d2"))
UNDERLAY = {H1: ("xvb-u1", "192.0.2.1"), H2: ("xvb-u2", "192.0.2.2")}
# id, TAP, bridge tag, domain subnet, security: one vnet per security level.
VNETS = (("99", "vnif0099", "vn", "10.99.0", "none"),
         ("9a", "vnif009a", "va", "10.154.0", "auth"),
         ("9b", "vnif009b", "vc", "10.155.0", "conf"))
VXLAN_MTU = 1450  # 1500 minus VXLAN's 50 bytes of headers
# vnet 9c on the engines' kernel VXLAN data path: id, device, bridge tag, subnet.
VXLAN_VNET = ("9c", "vnif009c", "vk", "10.156.0")
# vnet 9d: clear like 99, its domains at the MTU whose outer packets need no
# fragment (docs/performance.md), so two domain MTUs are measured in turns.
NARROW_MTU = 1436
NARROW_VNET = ("9d", "vnif009d", "vd", "10.157.0", "none")
CLEAR_VNETS = (VNETS[0], NARROW_VNET)     # what the kernel path and the legacy daemon carry
# engine phase -> (options, label); every user-space phase pins --no-kernel-path
# so that its rows keep meaning what they say.
PHASES = {
    "plain-tap": ("--no-kernel-path --no-tap-offload", "vnetd --no-tap-offload"),
    "plain": ("--no-kernel-path --no-offload", "vnetd --no-offload"),
    "fast": ("--no-kernel-path", "vnetd offload"),
}
KERNEL = "kernel"   # the phase of the kernel data path: the default options, loading required
KERNEL_LABEL = "vnetd kernel path"
REQUIRE_KERNEL_PATH = "XEND_VNET_REQUIRE_KERNEL_PATH"
# Whatever a vnet datagram may be on the underlay: UDP 1798, IP protocol 97,
# and the later fragments of a datagram (they carry no port).
CAPTURE_FILTER = "udp port 1798 or ip proto 97 or (ip[6:2] & 0x1fff != 0)"
ASK = ("import sys; from xend_vnet.engine_client import EngineClient; "
       "sys.stdout.write(EngineClient(sys.argv[1], timeout=10).request(sys.argv[2]))")
# One run at a time owns the namespaces (latency.py shares the test bed).
LOCK_PATH = os.path.join(tempfile.gettempdir(), "xend-vnet-benchmark.lock")


class BenchError(Exception):
    pass


def sh(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, check=False, timeout=timeout)
    if check and done.returncode != 0:
        raise BenchError(f"{' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def ip(*args: str) -> None:
    sh("ip", *args)


def in_ns(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *args]


def wait_for(what: str, test, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not test():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        time.sleep(0.1)


def rcvbuf_errors(hosts) -> int:
    """UDP receive-buffer drops so far in the namespaces ``hosts`` together
    (/proc/net/snmp): what a socket lost before its engine saw it."""
    total = 0
    for host in hosts:
        lines = [line.split() for line in sh(*in_ns(host, "cat", "/proc/net/snmp"))
                 .stdout.split("\n") if line.startswith("Udp:")]
        if len(lines) >= 2 and "RcvbufErrors" in lines[0]:
            total += int(lines[1][lines[0].index("RcvbufErrors")])
    return total


def take_lock(path: str, busy: str) -> int:
    """Hold the lock at ``path`` (one benchmark run at a time owns what it
    guards); BenchError saying ``busy`` when another run holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BenchError(f"another run holds {path}: {busy}") from None
    return fd


def remove_namespaces() -> None:
    """Delete this benchmark's namespaces (links inside them go with them)."""
    listed = sh("ip", "netns", "list", check=False).stdout.split("\n")
    for line in listed:
        name = line.split(" ")[0]
        if name.startswith(PREFIX):
            sh("ip", "netns", "del", name, check=False)


def machine() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), "")
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "python": platform.python_version(),
            "iperf3": sh("iperf3", "--version", check=False).stdout.split("\n")[0]}


def ping_times(output: str) -> list[float]:
    """The round trip of each answered ping in ping's output, in ms."""
    return [float(t) for t in re.findall(r"time=([\d.]+) ms", output)]


class Testbed:
    """The namespaces, links and processes of one benchmark run."""

    def __init__(self, vnet_mtu: int, profile: str | None):
        self.vnet_mtu = vnet_mtu
        self.profile = profile
        self.procs: list[subprocess.Popen] = []
        self.engines: dict[str, subprocess.Popen] = {}     # host -> its engine or daemon
        self.running: dict[str, str] = {}                  # host -> phase, or "legacy"
        self.offloads = True
        self.legacy: tuple[str, str] | None = None         # binary, extra arguments
        self.workdir = tempfile.mkdtemp(prefix=PREFIX)
        self.lock_fd: int | None = None     # held while this run owns the xvb- namespaces
        self.captures = 0

    # -- set-up --------------------------------------------------------------------------

    def build(self) -> None:
        self.lock_fd = take_lock(LOCK_PATH, f"its {PREFIX}* namespaces are in use")
        remove_namespaces()  # leftovers of an interrupted run
        for ns in (H1, H2, D1, D2):
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        u1, u2 = UNDERLAY[H1][0], UNDERLAY[H2][0]
        ip("link", "add", u1, "netns", H1, "type", "veth", "peer", "name", u2, "netns", H2)
        for host, (dev, addr) in UNDERLAY.items():
            ip("-n", host, "addr", "add", f"{addr}/24", "dev", dev)
            ip("-n", host, "link", "set", dev, "up")
            # design.md 11: multicast between namespaces needs the route.
            ip("-n", host, "route", "add", "224.0.0.0/4", "dev", dev)
        for i, (host, dom) in enumerate(((H1, D1), (H2, D2)), start=1):
            self._vxlan(host, dom, i)
            for _, _, tag, subnet, _ in VNETS:
                self._bridge_with_domain(host, dom, i, tag, None, f"{subnet}.{i}",
                                         self.vnet_mtu)
            self._bridge_with_domain(host, dom, i, VXLAN_VNET[2], None,
                                     f"{VXLAN_VNET[3]}.{i}", min(self.vnet_mtu, VXLAN_MTU))
            self._bridge_with_domain(host, dom, i, NARROW_VNET[2], None,
                                     f"{NARROW_VNET[3]}.{i}", NARROW_MTU)
        for ns in (H2, D2):
            self.start([*in_ns(ns, "iperf3", "-s")], f"iperf3-{ns}")

    def start_engines(self, phase: str) -> None:
        """Both vnetd with this phase's options; their TAPs go on the vnet bridges."""
        for host in (H1, H2):
            self.start_engine(host, phase)
        self.warm_up(self.phase_addresses(phase))

    def start_engine(self, host: str, phase: str) -> None:
        """One vnetd with the options of ``phase`` (or ``KERNEL``) in ``host``,
        instead of whatever ran there."""
        self.stop_engine(host)
        self._vnetd(host, phase)
        self._enslave_taps(host, tuple(v[1] for v in (*VNETS, NARROW_VNET)))
        self._enslave_vxlan_device(host)
        self.running[host] = phase

    @staticmethod
    def phase_addresses(phase: str) -> tuple:
        """The domain 2 addresses a phase's engines carry (for warming up)."""
        subnets = ([v[3] for v in CLEAR_VNETS] if phase == KERNEL
                   else [v[3] for v in VNETS] + [VXLAN_VNET[3]])
        return tuple(f"{s}.2" for s in subnets)

    def _enslave_vxlan_device(self, host: str) -> None:
        """The engine's VXLAN device goes on vnet 9c's bridge (xend-vnet's job on a host)."""
        _, dev, tag, _ = VXLAN_VNET
        wait_for(f"{dev} in {host}", lambda: sh(
            *in_ns(host, "ip", "link", "show", dev), check=False).returncode == 0)
        ip("-n", host, "link", "set", dev, "master", f"xvb-br{tag}", "up")

    def start_legacy(self, host: str) -> None:
        """The legacy daemon in ``host`` instead of whatever ran there, carrying
        vnets 99 and 9d (its TAPs go on their bridges)."""
        assert self.legacy is not None
        self.stop_engine(host)
        for _, tap, *_ in CLEAR_VNETS:   # our engines' TAPs persist, with offloads: fresh ones
            sh(*in_ns(host, "ip", "link", "del", tap), check=False)
        binary, extra = self.legacy
        state = tempfile.mkdtemp(prefix="legacy-", dir=self.workdir)
        dev, addr = UNDERLAY[host]
        argv = [a.format(device=dev, addr=addr) for a in extra.split()]
        self.engines[host] = self.start(
            in_ns(host, *legacy_vnetd.command(binary, addr, state,
                                              [v[0] for v in CLEAR_VNETS], argv)),
            f"legacy-{host}")
        self._enslave_taps(host, tuple(v[1] for v in CLEAR_VNETS))
        self.running[host] = "legacy"

    def ensure(self, host: str, what: str) -> None:
        """``host`` runs ``what`` (a phase, ``KERNEL`` or "legacy"), started if it does not."""
        if self.running.get(host) == what:
            return
        if what == "legacy":
            self.start_legacy(host)
        else:
            self.start_engine(host, what)
        self.warm_up(tuple(f"{v[3]}.2" for v in CLEAR_VNETS))

    def start_naive(self) -> None:
        """naive_forwarder.py in both hosts on vnet 99's TAP, each toward the other."""
        tap = VNETS[0][1]
        for host, peer in ((H1, H2), (H2, H1)):
            # The engines' TAPs persist, with their offloads on: a fresh one.
            sh(*in_ns(host, "ip", "link", "del", tap), check=False)
            self.engines[host] = self.start(
                [*in_ns(host, sys.executable, os.path.join(HERE, "naive_forwarder.py"),
                        tap, UNDERLAY[peer][1])], f"naive-{host}")
            self.running[host] = "naive"
            ip("-n", host, "link", "set", tap, "mtu", str(self.vnet_mtu))
            self._enslave_taps(host, (tap,))
        self.warm_up((f"{VNETS[0][3]}.2",))

    def _enslave_taps(self, host: str, taps: tuple) -> None:
        for _, tap, tag, _, _ in (*VNETS, NARROW_VNET):
            if tap not in taps:
                continue
            wait_for(f"{tap} in {host}", lambda t=tap: sh(
                *in_ns(host, "ip", "link", "show", t), check=False).returncode == 0)
            ip("-n", host, "link", "set", tap, "master", f"xvb-br{tag}", "up")

    def warm_up(self, addrs: tuple) -> None:
        """Resolve ARP and let the engines learn before anything is measured."""
        for addr in addrs:
            sh(*in_ns(D1, "ping", "-c", "3", "-i", "0.2", "-W", "2", addr), check=False)

    def set_offloads(self, on: bool) -> None:
        """The underlay's transmit offloads in both hosts (checksum, and with it
        segmentation): off stands for a NIC without tunnel offloads."""
        if on == self.offloads:
            return
        for host, (dev, _) in UNDERLAY.items():
            sh(*in_ns(host, "ethtool", "-K", dev, "tx", "on" if on else "off"))
        self.offloads = on

    def stop_engine(self, host: str) -> None:
        p = self.engines.pop(host, None)
        was = self.running.pop(host, None)
        if p is None:
            return
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        if was == KERNEL:
            self._remove_kernel_path(host)

    @staticmethod
    def _remove_kernel_path(host: str) -> None:
        """The kernel path's programs stay in the kernel when its engine stops
        (known unicast keeps flowing): whatever runs next in ``host`` must not
        have them on its underlay or TAPs."""
        for dev in (UNDERLAY[host][0], *(tap for _, tap, *_ in CLEAR_VNETS)):
            sh(*in_ns(host, "tc", "qdisc", "del", "dev", dev, "clsact"), check=False)

    def stop_engines(self) -> None:
        for host in list(self.engines):
            self.stop_engine(host)

    def _vxlan(self, host: str, dom: str, i: int) -> None:
        dev, local = UNDERLAY[host]
        remote = UNDERLAY[H2 if host == H1 else H1][1]
        ip("-n", host, "link", "add", "xvb-vx", "type", "vxlan", "id", "42", "local", local,
           "remote", remote, "dstport", "4789", "dev", dev)
        self._bridge_with_domain(host, dom, i, "vx", "xvb-vx", f"10.42.0.{i}", VXLAN_MTU)

    def _vnetd(self, host: str, phase: str) -> None:
        control = self.control(host)
        startup = os.path.join(self.workdir, f"{host}.conf")
        key = os.path.join(self.workdir, "vnet.key")
        if not os.path.exists(key):
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, os.urandom(32).hex().encode() + b"\n")
            os.close(fd)
        with open(startup, "w") as f:
            for vid, _, _, _, security in (*VNETS, NARROW_VNET):
                extra = f" (security {security}) (key-file {key})" if security != "none" else ""
                f.write(f"(vnet.add (id {vid}){extra})\n")
            f.write(f"(vnet.add (id {VXLAN_VNET[0]}) (data-path vxlan))\n")
        python = [sys.executable]
        if self.profile:
            python += ["-m", "cProfile", "-o", f"{self.profile}-{phase}-{host}.prof"]
        env_cmd = ["env", f"PYTHONPATH={REPO}"]
        if phase == KERNEL:
            env_cmd.append(f"{REQUIRE_KERNEL_PATH}=1")    # no silent fallback in its rows
        option = PHASES[phase][0] if phase in PHASES else None
        self.engines[host] = self.start(
            [*in_ns(host, *env_cmd, *python, "-m", "xend_vnet.kernel_shim.daemon",
                    "--control", control, "--no-default-vnets", "-f", startup,
                    "--mtu", str(self.vnet_mtu), "--device", UNDERLAY[host][0],
                    "--epoch-file", control + ".epoch",
                    "--log-file", os.path.join(self.workdir, f"{host}.log"),
                    *(option.split() if option else []))],
            f"vnetd-{phase}-{host}")
        wait_for(f"vnetd in {host} to answer", lambda: self.ask(host, "(engine.status)",
                                                               check=False), timeout=20)

    def control(self, host: str) -> str:
        return os.path.join(self.workdir, f"{host}.sock")

    def ask(self, host: str, request: str, check: bool = True) -> str:
        """The reply of the engine in ``host`` to one control request."""
        done = sh(*in_ns(host, "env", f"PYTHONPATH={REPO}", sys.executable, "-c", ASK,
                         self.control(host), request), check=check)
        return done.stdout

    def _bridge_with_domain(self, host: str, dom: str, i: int, tag: str, port: str | None,
                            addr: str, mtu: int) -> None:
        bridge, host_end = f"xvb-br{tag}", f"xvb-d{i}{tag}"
        ip("-n", host, "link", "add", bridge, "type", "bridge", "stp_state", "0",
           "forward_delay", "0")
        ip("-n", host, "link", "set", bridge, "up")
        if port:
            ip("-n", host, "link", "set", port, "master", bridge, "up")
        ip("link", "add", host_end, "netns", host, "mtu", str(mtu), "type", "veth",
           "peer", "name", tag + "0", "netns", dom, "mtu", str(mtu))
        ip("-n", host, "link", "set", host_end, "master", bridge)
        ip("-n", host, "link", "set", host_end, "up")
        ip("-n", dom, "addr", "add", f"{addr}/24", "dev", tag + "0")
        ip("-n", dom, "link", "set", tag + "0", "up")

    def start(self, argv: list[str], name: str) -> subprocess.Popen:
        with open(os.path.join(self.workdir, f"{name}.out"), "w") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        time.sleep(0.3)
        if proc.poll() is not None:
            with open(os.path.join(self.workdir, f"{name}.out")) as f:
                raise BenchError(f"{name} exited at start: {f.read().strip()}")
        return proc

    # -- measurements ----------------------------------------------------------------------

    def iperf(self, client: str, addr: str, seconds: float, reverse: bool = False) -> dict:
        for attempt in range(3):
            done = sh(*in_ns(client, "iperf3", "-c", addr, "-t", f"{seconds:g}", "-J",
                             *(["-R"] if reverse else [])),
                      check=False, timeout=seconds + 60)
            try:
                result = json.loads(done.stdout)
            except ValueError:
                result = {"error": done.stderr.strip() or "no output"}
            if "error" not in result:
                end = result["end"]
                return {"bits_per_second": end["sum_received"]["bits_per_second"],
                        "retransmits": end["sum_sent"].get("retransmits", 0)}
            time.sleep(1)
        raise BenchError(f"iperf3 {'-R ' if reverse else ''}to {addr} from {client}: "
                         f"{result['error']}")

    def ping(self, client: str, addr: str, count: int) -> dict:
        done = sh(*in_ns(client, "ping", "-c", str(count), "-i", "0.05", "-W", "2", addr),
                  check=False, timeout=count + 30)
        rtt = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms", done.stdout)
        loss = re.search(r"([\d.]+)% packet loss", done.stdout)
        if rtt is None:
            raise BenchError(f"ping {addr} from {client}: {done.stdout.strip()[-300:]}")
        return {"rtt_avg_ms": float(rtt.group(2)), "rtt_min_ms": float(rtt.group(1)),
                "rtt_ms": ping_times(done.stdout),
                "loss_percent": float(loss.group(1)) if loss else None}

    def rcvbuf_errors(self) -> int:
        """UDP receive-buffer drops so far, both hosts together (/proc/net/snmp)."""
        return rcvbuf_errors((H1, H2))

    def vnet_stats(self, host: str) -> str:
        """``(vnet.stats)`` of the engine in ``host``, as text."""
        return self.ask(host, "(vnet.stats)")

    def capture(self, host: str, packets: int) -> tuple[subprocess.Popen, str]:
        """tcpdump on ``host``'s underlay into a new file, at most ``packets``
        vnet packets of any length (fragments included); started when it listens."""
        self.captures += 1
        path = os.path.join(self.workdir, f"capture-{self.captures}-{host}.pcap")
        err = os.path.join(self.workdir, f"capture-{self.captures}-{host}.out")
        with open(err, "w") as log:
            proc = subprocess.Popen(
                in_ns(host, "tcpdump", "-i", UNDERLAY[host][0], "-n", "-s", "0", "-B", "8192",
                      "-Z", "root", "-c", str(packets), "-w", path, CAPTURE_FILTER),
                stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        self.procs.append(proc)

        def listening() -> bool:
            if proc.poll() is not None and proc.returncode != 0:
                with open(err) as f:
                    raise BenchError(f"tcpdump in {host}: {f.read().strip()}")
            with open(err) as f:
                return "listening on" in f.read()
        wait_for(f"tcpdump in {host}", listening)
        return proc, path

    @staticmethod
    def end_capture(proc: subprocess.Popen, path: str,
                    sources: set[str] | None) -> capture_check.Report:
        """Stop a capture (if its count did not) and check what it holds."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if not os.path.exists(path):
            raise BenchError(f"no capture file {path}")
        report = capture_check.check_file(path, sources)
        os.unlink(path)           # full frames: megabytes each
        return report

    # -- tear-down ---------------------------------------------------------------------------

    def cleanup(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()
        self.engines.clear()
        if self.lock_fd is not None:       # never another run's namespaces
            remove_namespaces()
            os.close(self.lock_fd)
            self.lock_fd = None
        shutil.rmtree(self.workdir, ignore_errors=True)
