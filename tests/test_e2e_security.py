"""End-to-end: secured vnets between vnetd engines in namespaces (design.md 7).

Hosts a and b run vnet 97 with security conf and vnet 98 with security
auth, from one key file each; host x (the intruder) runs vnets 97 and 98
with security none and no key.  Domains sit on bridges with the vnet TAPs,
as Xen's vif-bridge does.  Engines run with short epochs (2 s, maximum age
6 s) so the epoch rules show within the test's time.  The tests run in file
order and share the world; each says what it relies on.  Every engine runs
with ``--no-kernel-path``: secured vnets live in user space, and host x's
clear vnets must meet them there.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest
from e2e_helpers import counter, drops, no_loss_after_first, ping, varp_entries
from netns import USER, Lab, is_root, socket_in_netns, wait_for
from test_e2e_engine import CLIENT, SERVER

from xend_vnet.kernel_shim.wire import codec
from xend_vnet.kernel_shim.security import keys
from xend_vnet.kernel_shim.security.keystore import SecurityContext, VnetKeys
from xend_vnet.vnet_id import VnetId

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not is_root(), reason="needs root and /dev/net/tun")]

V97 = VnetId.parse("97").canonical
V98 = VnetId.parse("98").canonical
A, B, X = "192.0.2.1", "192.0.2.2", "192.0.2.9"
LEVELS = {"97": "conf", "98": "auth"}
MAX_AGE = 6.0
DOMAINS = {  # name: (host, vnet, address, MAC)
    "da7": ("a", "97", "10.97.0.1", "aa:00:00:00:97:01"),
    "db7": ("b", "97", "10.97.0.2", "aa:00:00:00:97:02"),
    "dx7": ("x", "97", "10.97.0.66", "aa:00:00:00:97:66"),
    "da8": ("a", "98", "10.98.0.1", "aa:00:00:00:98:01"),
    "db8": ("b", "98", "10.98.0.2", "aa:00:00:00:98:02"),
}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATTERN = "5ec2e75ec2e75ec2e75ec2e75ec2e701"   # ping -p: 16 bytes, repeated


class World:
    def __init__(self, lab: Lab):
        self.lab = lab
        self.ns: dict[str, str] = {}
        self.vnetd = {}
        self.files = {}
        self.key = {}
        lab.underlay()
        for vnet in LEVELS:
            path = self.key[vnet] = os.path.join(lab.tmp, f"vnet{vnet}.key")
            subprocess.run([sys.executable, "-m", "xend_vnet.vn.main", "key-gen", path],
                           check=True, cwd=REPO)
        for name, addr in (("a", A), ("b", B), ("x", X)):
            ns = self.ns[name] = lab.host(name, addr)
            path = self.files[name] = os.path.join(lab.tmp, f"{name}.conf")
            with open(path, "w") as f:
                for vnet, level in LEVELS.items():
                    if name == "x":
                        f.write(f"(vnet.add (id {vnet}))\n")
                    else:
                        f.write(f"(vnet.add (id {vnet}) (security {level}) "
                                f"(key-file {self.key[vnet]}))\n")
            self.vnetd[name] = lab.start_vnetd(ns, *self.args(name))
            for vnet in LEVELS:
                lab.bridge(ns, f"vnet{vnet}", f"vnif00{vnet}")
        for name, (host, vnet, addr, mac) in DOMAINS.items():
            self.ns[name] = lab.domain(name, self.ns[host], f"vnet{vnet}", addr, mac=mac)

    def args(self, host: str) -> list:
        return ["--no-default-vnets", "-f", self.files[host], "--epoch-lifetime", "2",
                "--epoch-max-age", f"{MAX_AGE:g}"]

    def restart(self, host: str, tag: str):
        old = self.vnetd[host]
        assert old.stop() == 0
        new = self.vnetd[host] = self.lab.start_vnetd(self.ns[host], *self.args(host),
                                                      name=tag, control=old.control)
        return new



@pytest.fixture(scope="module")
def world():
    lab = Lab("xv5-", USER)
    try:
        yield World(lab)
    finally:
        lab.close()


# -- helpers ---------------------------------------------------------------------------

class Capture:
    """tcpdump of UDP port 1798 on one port of the LAN bridge."""

    def __init__(self, lab: Lab, port: str):
        self.path = os.path.join(lab.tmp, f"cap-{time.monotonic_ns()}.pcap")
        self.proc = lab.spawn(lab.ul, "tcpdump", "-n", "-U", "--immediate-mode", "-i", port,
                              "-w", self.path, "udp", "port", "1798",
                              stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        assert "listening" in line, line

    def stop(self) -> list[tuple[str, str, bytes]]:
        """(source, destination, UDP payload) of every captured datagram."""
        time.sleep(0.3)
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(10)
        with open(self.path, "rb") as f:
            data = f.read()
        out, off = [], 24
        while off + 16 <= len(data):
            incl = struct.unpack_from("<I", data, off + 8)[0]
            pkt = data[off + 16:off + 16 + incl]
            off += 16 + incl
            if pkt[12:14] != b"\x08\x00":
                continue
            ihl = (pkt[14] & 15) * 4
            ip = pkt[14:]
            out.append((socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20]),
                        ip[ihl + 8:]))
        return out


def send_from(ns: str, src: str, dst: str, payloads: list[bytes]) -> None:
    """UDP datagrams to port 1798 of ``dst`` from address ``src`` in namespace ``ns``."""
    s = socket_in_netns(ns)
    try:
        s.bind((src, 0))
        for p in payloads:
            s.sendto(p, (dst, 1798))
            time.sleep(0.0005)
    finally:
        s.close()
    time.sleep(0.3)


def secure_drops(d) -> int:
    return sum(n for r, n in drops(d).items()
               if r in ("bad_icv", "replay", "replay_too_old", "epoch_old", "epoch_expired",
                        "epoch_future", "secure_bad_care_of",
                        "unknown_spi", "secure_bad_suite", "secure_truncated",
                        "unknown_msg_id", "clear_on_secured"))


def read_key(path: str) -> bytes:
    return keys.read_key_file(path)


def genuine(world, vnet: str, frame: bytes, care_of: str = A) -> bytes:
    """A correctly sealed message made with the vnet's key (what a keyed host sends)."""
    vid = VnetId.parse(vnet)
    k = VnetKeys(vid.raw, LEVELS[vnet], SecurityContext.system())
    k.add(k.prepare(read_key(world.key[vnet])))
    return k.seal(codec.DATA_PREFIX + vid.raw + frame, socket.inet_aton(care_of), 0.0)


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


# -- tests ---------------------------------------------------------------------------------

def test_secured_vnets_up_and_listed_without_key_material(world):
    for name in ("a", "b", "x"):
        wait_for(lambda n=name: world.vnetd[n].status()["group-joined"] == "yes", timeout=10)
    a = world.vnetd["a"]
    text = a.request("(vnet.list)") + a.request("(vnet.key (id 97) (list))")
    assert "(security conf) (data-path vnetd) (header 116) (keys (gen " in text
    assert "(security auth)" in text
    secrets = [read_key(world.key[v]).hex() for v in LEVELS]
    for d in world.vnetd.values():
        assert not any(s in d.log() for s in secrets)
    assert not any(s in text for s in secrets)


@pytest.mark.parametrize("vnet", ["97", "98"])
def test_ping_both_ways(world, vnet):
    lab = world.lab
    n = vnet[-1]
    _rc, seqs, out = ping(lab, world.ns[f"da{n}"], f"10.{vnet}.0.2", count=10, interval=0.1)
    assert no_loss_after_first(seqs, 10), out
    rc, seqs, out = ping(lab, world.ns[f"db{n}"], f"10.{vnet}.0.1", count=10, interval=0.1)
    assert rc == 0 and seqs == list(range(1, 11)), out
    # Learned from the authenticated care-of addresses.
    assert varp_entries(world.vnetd["a"])[DOMAINS[f"db{n}"][3]]["addr"] == B
    assert varp_entries(world.vnetd["b"])[DOMAINS[f"da{n}"][3]]["addr"] == A


@pytest.mark.parametrize("vnet", ["97", "98"])
def test_tcp_transfer_50mb_intact(world, vnet):
    lab = world.lab
    n = vnet[-1]
    size = 50 * 1024 * 1024
    server = lab.spawn(world.ns[f"db{n}"], sys.executable, "-c",
                       SERVER.replace("5001", "5002"), f"10.{vnet}.0.2",
                       stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "listening"
    out = lab.ns_sh(world.ns[f"da{n}"], sys.executable, "-c", CLIENT.replace("5001", "5002"),
                    f"10.{vnet}.0.2", str(size), timeout=240).stdout.split()
    server.wait(30)
    sent, received = out[:2], out[2:4]
    assert sent == received and int(sent[0]) == size, out


def test_capture_conf_hides_payload_auth_shows_it(world):
    lab = world.lab
    cap = Capture(lab, "v-a")
    for n, vnet in (("7", "97"), ("8", "98")):
        rc, _seqs, out = ping(lab, world.ns[f"da{n}"], f"10.{vnet}.0.2", count=3,
                              interval=0.1, size=64, extra=("-p", PATTERN))
        assert rc == 0, out
    packets = cap.stop()
    pattern = bytes.fromhex(PATTERN) * 2
    secured = [p for _s, _d, p in packets if p[:2] == b"\x00\x04"]
    assert len(secured) >= 12 and not [p for _s, _d, p in packets if p[:2] == b"\x00\x02"]
    conf = [p for p in secured if p[2:4] == b"\x00\x02"]
    auth = [p for p in secured if p[2:4] == b"\x00\x01"]
    assert len(conf) >= 6 and len(auth) >= 6
    assert not any(pattern in p or mac(DOMAINS["da7"][3]) in p for p in conf)
    assert sum(pattern in p for p in auth) >= 6
    assert all(mac(DOMAINS["da8"][3]) in p or mac(DOMAINS["db8"][3]) in p for p in auth)


def test_host_without_the_key_gets_nothing_through(world):
    lab, b = world.lab, world.vnetd["b"]
    rx0, clear0 = counter(b, V97, "rx_packets"), drops(b).get("clear_on_secured", 0)
    dx = world.ns["dx7"]
    # Clear frames with a static neighbour entry (no ARP needed), flooded and unicast.
    lab.ns_sh(dx, "ip", "neigh", "replace", "10.97.0.2", "lladdr", DOMAINS["db7"][3],
              "dev", "eth0", "nud", "permanent")
    x = world.vnetd["x"]
    x.call(["vif.add", ["vnet", "97"], ["vmac", DOMAINS["dx7"][3]]])
    rc, seqs, _ = ping(lab, dx, "10.97.0.2", count=5, interval=0.1)
    assert rc != 0 and seqs == []
    assert drops(b)["clear_on_secured"] - clear0 >= 5
    # Forged id-4 packets with the right SPI (it is on the wire) and random bodies.
    (entry,) = b.call(["vnet.key", ["id", "97"], ["list"]])
    spi = int(dict((c[0], c[1]) for c in entry[1:])["spi"], 16)
    before = secure_drops(b)
    forged = [struct.pack("!HHI", 4, 2, spi) + os.urandom(28) + socket.inet_aton(X)
              + os.urandom(80) for _ in range(50)]
    now_epoch = time.time_ns()
    forged += [struct.pack("!HHIQQQ4s", 4, 2, spi, 77, now_epoch, i + 1, socket.inet_aton(X))
               + os.urandom(80) for i in range(50)]
    send_from(world.ns["x"], X, B, forged)
    assert secure_drops(b) - before == 100
    assert counter(b, V97, "rx_packets") == rx0
    assert DOMAINS["dx7"][3] not in varp_entries(b)


def capture_a_to_b(world, count: int = 5) -> list[bytes]:
    cap = Capture(world.lab, "v-b")
    rc, _seqs, out = ping(world.lab, world.ns["da7"], "10.97.0.2", count=count, interval=0.05)
    assert rc == 0, out
    return [p for s, d, p in cap.stop() if (s, d) == (A, B) and p[:2] == b"\x00\x04"]


def test_replays_refused_from_the_original_and_a_rewritten_source(world):
    b = world.vnetd["b"]
    world.captured = captured = capture_a_to_b(world)
    assert len(captured) >= 5
    rx0, replay0 = counter(b, V97, "rx_packets"), drops(b).get("replay", 0)
    send_from(world.ns["a"], A, B, captured)     # the original source
    send_from(world.ns["x"], X, B, captured)     # outer source rewritten
    assert drops(b)["replay"] - replay0 == 2 * len(captured)
    assert counter(b, V97, "rx_packets") == rx0


def test_one_flipped_bit_anywhere_and_an_altered_care_of_refused(world):
    b = world.vnetd["b"]
    fake = mac("aa:00:00:00:97:77")
    frame = mac(DOMAINS["db7"][3]) + fake + b"\x08\x00" + bytes(46)
    wire = genuine(world, "97", frame)
    flipped = []
    for i in range(len(wire)):
        bad = bytearray(wire)
        bad[i] ^= 1 << (i % 8)
        flipped.append(bytes(bad))
    moved = bytearray(wire)
    moved[32:36] = socket.inet_aton(X)       # care-of pointed at the intruder
    rx0, before = counter(b, V97, "rx_packets"), secure_drops(b)
    send_from(world.ns["x"], X, B, flipped + [bytes(moved)])
    assert secure_drops(b) - before == len(flipped) + 1
    assert counter(b, V97, "rx_packets") == rx0
    assert "aa:00:00:00:97:77" not in varp_entries(b)
    # The untouched packet passes, so it was the flips that failed the checks.
    send_from(world.ns["x"], X, B, [wire])
    assert counter(b, V97, "rx_packets") == rx0 + 1
    assert varp_entries(b)["aa:00:00:00:97:77"]["addr"] == A


def test_sender_restart_resumes_within_a_second_old_epoch_refused(world):
    lab, b = world.lab, world.vnetd["b"]
    before = world.captured
    world.restart("a", "a2")
    _rc, seqs, out = ping(lab, world.ns["da7"], "10.97.0.2", count=20, interval=0.1)
    assert seqs and seqs[0] <= 10 and no_loss_after_first(seqs, 20), out
    rx0, drops0 = counter(b, V97, "rx_packets"), secure_drops(b)
    send_from(world.ns["a"], A, B, before)
    assert secure_drops(b) - drops0 == len(before)
    assert counter(b, V97, "rx_packets") == rx0


def test_receiver_restart_refuses_replays_older_than_the_epoch_age(world):
    lab = world.lab
    captured = capture_a_to_b(world)
    time.sleep(MAX_AGE + 1)
    b = world.restart("b", "b2")
    wait_for(lambda: b.status()["group-joined"] == "yes", timeout=10)
    rx0 = counter(b, V97, "rx_packets")
    send_from(world.ns["a"], A, B, captured)
    assert drops(b).get("epoch_expired", 0) == len(captured)
    assert counter(b, V97, "rx_packets") == rx0
    _rc, seqs, out = ping(lab, world.ns["da7"], "10.97.0.2", count=10, interval=0.1)
    assert no_loss_after_first(seqs, 10), out


def vn(world, host: str, *args: str) -> str:
    return world.lab.ns_sh(world.ns[host], sys.executable, "-m", "xend_vnet.vn.main",
                           "--control", world.vnetd[host].control, *args).stdout


def test_rotation_in_three_steps_under_a_ping_flood(world):
    lab = world.lab
    new_key = os.path.join(lab.tmp, "vnet97-2.key")
    vn(world, "a", "key-gen", new_key)
    old = keys.generation(read_key(world.key["97"]), VnetId.parse("97").raw)
    flood = lab.spawn(world.ns["da7"], "ping", "-n", "-q", "-i", "0.005", "-c", "1200",
                      "-W", "1", "10.97.0.2", stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    gens = set()
    for host in ("a", "b"):
        out = vn(world, host, "key-add", "97", new_key)
        gens.add(out.split()[1])
        time.sleep(0.3)
    (gen,) = gens
    for step in (("key-activate", gen), ("key-retire", str(old))):
        for host in ("a", "b"):
            vn(world, host, step[0], "97", step[1])
            time.sleep(0.3)
    out, _ = flood.communicate(timeout=60)
    sent, got = (int(w) for w in
                 (out.split(" packets transmitted, ")[0].split()[-1],
                  out.split(" packets transmitted, ")[1].split()[0]))
    assert sent == 1200 and sent - got <= 5, out
    listing = vn(world, "b", "keys", "97")
    assert f"{gen:>5}  active" in listing and f"{old:>5}  retired" in listing, listing
    _rc, seqs, out = ping(lab, world.ns["db7"], "10.97.0.1", count=5, interval=0.1)
    assert seqs == [1, 2, 3, 4, 5], out
