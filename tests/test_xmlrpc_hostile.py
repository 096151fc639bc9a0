"""The management plane against hostile local users and clients (docs/security.md,
management plane limits): request heads over budget, one caller holding every
connection slot, the socket's mode under a permissive umask, accept() out of
descriptors, and the soak: 200 hostile connections on every listener while a
legitimate caller creates and deletes 100 vnets.  The uid tests run a child
as nobody (tests run as root); only unix sockets and 127.0.0.1."""

from __future__ import annotations

import errno
import grp
import json
import os
import selectors
import socket
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
from test_xmlrpc_tls import make_cert
from vnet_server_harness import Harness

from xend_vnet.kernel_shim.control.server import ControlServer
from xend_vnet.xmlrpc.limits import MAX_PER_CALLER, CallerSlots
from xend_vnet.xmlrpc.server import ServerError, XMLRPCServers
from xend_vnet.xmlrpc.unix_socket import unix_group_id

NOBODY = 65534
HOSTILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hostile_clients.py")
# The children need only the standard library, from an interpreter nobody may run.
NOBODY_PYTHON = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3")
                      if os.path.exists(p)), sys.executable)
HEAD = b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs a child of another uid")


def as_nobody(*args: str, **kw) -> subprocess.Popen:
    """``python3 ARGS`` as nobody:nogroup, pipes on stdin and stdout."""
    return subprocess.Popen([NOBODY_PYTHON, *args], user=NOBODY,
                            group=grp.getgrnam("nogroup").gr_gid, extra_groups=[], cwd="/",
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **kw)


@pytest.fixture
def h():
    harness = Harness()
    yield harness
    harness.close()


# -- the request head ---------------------------------------------------------------

def test_oversized_header_line_gets_431(h):
    reply = h.raw(HEAD + b"X-Long: " + b"a" * 9000 + b"\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 431 ")
    assert b"header line longer than 8192 bytes" in reply
    assert b"Connection: close" in reply


def test_too_many_header_bytes_get_431(h):
    lines = b"".join(b"X-%d: %s\r\n" % (i, b"b" * 6000) for i in range(6))
    reply = h.raw(HEAD + lines + b"\r\n")
    assert reply.startswith(b"HTTP/1.1 431 ")
    assert b"larger than 32768 bytes in all" in reply


def test_too_many_header_lines_get_431(h):
    reply = h.raw(HEAD + b"".join(b"X-%d: y\r\n" % i for i in range(150)) + b"\r\n")
    assert reply.startswith(b"HTTP/1.1 431 ")
    assert b"more than 100 header lines" in reply


def test_oversized_request_line_gets_414(h):
    reply = h.raw(b"POST /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 414 ")
    assert b"request line longer than 8192 bytes" in reply


def test_a_head_within_the_limits_is_served(h):
    body = b"<?xml version='1.0'?><methodCall><methodName>xend_vnets</methodName></methodCall>"
    lines = b"".join(b"X-%d: %s\r\n" % (i, b"c" * 250) for i in range(90))
    reply = h.raw(HEAD + lines + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert reply.startswith(b"HTTP/1.1 200 ")


# -- connection slots ---------------------------------------------------------------

def test_caller_slots_are_capped_per_caller_and_in_all():
    slots = CallerSlots(total=3, per_caller=2)
    assert slots.take("uid 1") is None and slots.take("uid 1") is None
    assert "uid 1 already holds 2 connections" in slots.take("uid 1")
    assert slots.take("uid 2") is None
    assert "all 3 connections are in use" in slots.take("uid 3")
    slots.give_back("uid 1")
    assert slots.take("uid 3") is None


CHILD_HOLDING_SLOTS = textwrap.dedent("""
    import socket, sys, time
    path, n = sys.argv[1], int(sys.argv[2])
    held = [socket.socket(socket.AF_UNIX) for _ in range(n)]
    for s in held:
        s.connect(path)
    time.sleep(0.5)                  # the server has given them their slots
    extra = socket.socket(socket.AF_UNIX)
    extra.settimeout(5)
    extra.connect(path)
    started = time.monotonic()
    reply = extra.recv(4096).decode()
    print(round(time.monotonic() - started, 3), reply.replace("\\r\\n", "|"), flush=True)
    sys.stdin.read()
""")


@as_root
def test_one_uid_holding_all_its_slots_does_not_stop_another_uid():
    h = Harness(unix_group="nogroup")
    os.chmod(h.dir, 0o711)
    child = as_nobody("-c", CHILD_HOLDING_SLOTS, h.sock, str(MAX_PER_CALLER))
    try:
        waited, reply = child.stdout.readline().split(" ", 1)
        assert reply.startswith("HTTP/1.1 503 "), reply
        assert f"uid {NOBODY} already holds {MAX_PER_CALLER} connections" in reply
        assert float(waited) < 1.0          # refused at once, not after a wait
        started = time.monotonic()
        assert h.rpc.xend_vnets() == []     # root still gets a slot
        assert time.monotonic() - started < 1.0
    finally:
        child.stdin.close()
        child.wait(10)
        h.close()


# -- the socket's mode --------------------------------------------------------------

SOCKET_UNDER_UMASK_0 = textwrap.dedent("""
    import os, sys
    from xend_vnet.xmlrpc.server import XMLRPCServers
    os.umask(0)
    servers = XMLRPCServers(None, sys.argv[1], None, unix_group=sys.argv[2] or None)
    st, parent = os.lstat(sys.argv[1]), os.stat(os.path.dirname(sys.argv[1]))
    print(oct(st.st_mode & 0o7777), st.st_gid, oct(parent.st_mode & 0o7777), parent.st_gid)
    servers.close()
""")


@pytest.mark.parametrize("group", ["", "nogroup"])
def test_socket_mode_is_explicit_under_umask_000(tmp_path, group):
    path = tmp_path / "run" / "xmlrpc.sock"
    out = subprocess.run([sys.executable, "-c", SOCKET_UNDER_UMASK_0, str(path), group],
                         capture_output=True, text=True, timeout=30, check=True,
                         cwd=os.path.dirname(os.path.dirname(HOSTILE))).stdout.split()
    if group:
        gid = str(grp.getgrnam(group).gr_gid)
        assert out == ["0o660", gid, "0o710", gid]
    else:
        assert out[0] == "0o600" and out[2] == "0o700"


def test_unknown_socket_group_is_a_clear_start_up_error():
    with pytest.raises(ServerError, match="unknown group 'no-such-group-x'.*xend-vnet-unix-group"):
        unix_group_id("no-such-group-x")


# -- accept() out of descriptors ----------------------------------------------------

class NoDescriptors:
    """A listener whose accept() always fails with EMFILE."""

    def __init__(self, real: socket.socket):
        self.real = real
        self.accepts = 0

    def fileno(self) -> int:
        return self.real.fileno()

    def accept(self):
        self.accepts += 1
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    def close(self) -> None:
        self.real.close()


def test_engine_control_socket_pauses_after_emfile(tmp_path, caplog):
    selector = selectors.DefaultSelector()
    server = ControlServer(str(tmp_path / "vnetd.sock"), str, selector)
    server.listen()
    server.listener = fake = NoDescriptors(server.listener)
    server._on_accept(selectors.EVENT_READ, 100.0)
    server._on_accept(selectors.EVENT_READ, 100.1)   # a stale event of the same wakeup
    assert fake.accepts == 1 and server.accept_backoff.failures == 1
    assert fake.fileno() not in selector.get_map()   # not polled: no spinning
    assert server.next_deadline() == pytest.approx(100.5)
    server.expire(100.3)
    assert fake.fileno() not in selector.get_map()
    server.expire(100.6)
    assert fake.fileno() in selector.get_map()       # polled again after the pause
    server._on_accept(selectors.EVENT_READ, 100.7)   # still out of descriptors
    assert fake.accepts == 2 and fake.fileno() not in selector.get_map()
    assert len([r for r in caplog.records if "accept() failed" in r.message]) == 1
    server.close()
    selector.close()


def test_xmlrpc_listener_pauses_after_emfile(tmp_path):
    servers = XMLRPCServers(None, str(tmp_path / "xmlrpc.sock"), None)
    listener = servers.servers[0]
    listener.socket = fake = NoDescriptors(listener.socket)
    client = socket.socket(socket.AF_UNIX)
    client.connect(str(tmp_path / "xmlrpc.sock"))    # the listener stays readable
    servers.start()
    time.sleep(1.2)
    servers.close()
    client.close()
    assert 1 <= fake.accepts <= 4, fake.accepts     # spinning would be many thousands
    assert listener.accept_backoff.failures == fake.accepts


SERVER_SHORT_OF_DESCRIPTORS = textwrap.dedent("""
    import os, resource, sys, time
    from xend_vnet.xmlrpc.server import XMLRPCServers
    servers = XMLRPCServers(None, sys.argv[1], None)
    servers.start()
    time.sleep(0.3)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 3,
                                                resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    print("ready", flush=True)
    sys.stdin.read()
    print(servers.servers[0].accept_backoff.failures, flush=True)
""")


def test_xmlrpc_server_out_of_descriptors_does_not_spin(tmp_path):
    path = str(tmp_path / "xmlrpc.sock")
    child = subprocess.Popen([sys.executable, "-c", SERVER_SHORT_OF_DESCRIPTORS, path],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             cwd=os.path.dirname(os.path.dirname(HOSTILE)))
    clients = []
    try:
        assert child.stdout.readline() == "ready\n"
        for _ in range(10):                 # more than its descriptors allow
            clients.append(socket.socket(socket.AF_UNIX))
            clients[-1].connect(path)
        time.sleep(0.5)
        server = psutil.Process(child.pid)
        before = sum(server.cpu_times()[:2])
        time.sleep(1.5)
        busy = sum(server.cpu_times()[:2]) - before
        child.stdin.close()
        failures = int(child.stdout.readline())
    finally:
        for c in clients:
            c.close()
        child.kill()
        child.wait(10)
    assert busy < 0.5, f"{busy:.2f} s of CPU in 1.5 s: the accept loop spins"
    assert 2 <= failures <= 10, failures    # one try per 0.5 s pause


# -- the soak -----------------------------------------------------------------------

@as_root
def test_soak_200_hostile_connections_on_every_listener_while_100_vnets_come_and_go(
        tmp_path):
    h = Harness(tcp=True, tls=make_cert(tmp_path), unix_group="nogroup")
    plain = XMLRPCServers(h.servers.servers[0].api, None, ("127.0.0.1", 0),
                          slots=h.servers.slots)
    plain.start()
    os.chmod(h.dir, 0o711)
    targets = {"unix": ["unix", h.sock], "tcp": ["tcp", plain.servers[0].server_address[1]],
               "tls": ["tls", h.servers.servers[1].server_address[1]]}
    me = psutil.Process()
    rss_before = me.memory_info().rss
    child = as_nobody(HOSTILE, json.dumps({"targets": targets, "connections": 200}))
    latencies, rss_peak = [], rss_before
    try:
        assert child.stdout.readline() == "started\n"
        time.sleep(3)                                 # the attack is in full swing
        for i in range(101, 201):           # ids 1 and 2 are reserved
            for call, arg in ((h.rpc.xend_vnet_create,
                               f"(vnet (id {i}) (bridge vnb{i}) (vnetif vnf{i}))"),
                              (h.rpc.xend_vnet_delete, str(i))):
                started = time.monotonic()
                assert call(arg) is None
                latencies.append(time.monotonic() - started)
            rss_peak = max(rss_peak, me.memory_info().rss)
    finally:
        child.stdin.close()
        seen = json.loads(child.stdout.readline() or "{}")
        child.wait(30)
        plain.close()
        h.close()
    growth = (rss_peak - rss_before) / 2**20
    print(f"\nsoak: {len(latencies)} legit calls, max {max(latencies):.3f} s; RSS "
          f"{rss_before / 2**20:.1f} MiB before, {rss_peak / 2**20:.1f} MiB at most "
          f"(+{growth:.1f} MiB); hostile outcomes {seen}")
    assert max(latencies) < 2.0
    assert growth < 64
    for kind in ("unix", "tcp", "tls"):
        assert seen.get(f"{kind} long_line 431"), seen
        assert seen.get(f"{kind} many_bytes 431"), seen
    assert seen.get("unix entity_bomb 200") and seen.get("tcp entity_bomb 200"), seen


def test_callers_over_tcp_leave_slots_for_the_unix_socket():
    # Four remote addresses at their per-caller share would hold every slot:
    # the unix socket's callers keep a reserve (docs/security.md).
    slots = CallerSlots(total=64, per_caller=16)
    taken = [slots.take(f"address 192.0.2.{i // 16}") for i in range(64)]
    assert taken[:48] == [None] * 48 and all(t for t in taken[48:])
    assert "callers over TCP" in taken[-1]
    assert [slots.take("uid 0") for _ in range(16)] == [None] * 16
    slots.give_back("address 192.0.2.0")
    assert slots.take("address 192.0.2.9") is None and slots.remote == 48
