"""ControlServer on its own and over the fake engine (no root): one request per
connection, answered once one expression is complete (design.md 6), caps,
deadlines, paths."""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import stat
import threading
import time

import pytest

from fake_engine import err

from xend_vnet import sxp
from xend_vnet.engine_client import EngineClient
from xend_vnet.kernel_shim.control.server import ControlServer, ControlSocketError, error_reply


class Loop:
    """The engine's loop in a thread: dispatch events, expire stuck requests."""

    def __init__(self, path: str, handler, **kw):
        self.selector = selectors.DefaultSelector()
        self.server = ControlServer(path, handler, self.selector, **kw)
        self.server.listen()
        self.stop = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop:
            for key, mask in self.selector.select(0.02):
                key.data(mask, time.monotonic())
            self.server.expire(time.monotonic())

    def close(self):
        self.stop = True
        self.thread.join(5)
        self.server.close()


@pytest.fixture
def serve(tmp_path):
    loops = []

    def start(handler=lambda text: f"echo {text}", **kw):
        loop = Loop(str(tmp_path / "run" / "vnetd.sock"), handler, **kw)
        loops.append(loop)
        return loop

    yield start
    for loop in loops:
        loop.close()


def test_request_reply_and_mode(serve):
    loop = serve()
    path = loop.server.path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert EngineClient(path).request("(vnet.list)") == "echo (vnet.list)"
    assert EngineClient(path).request("") == "echo "
    loop.close()
    assert not os.path.exists(path)


def test_handler_failure_is_answered_and_server_continues(serve):
    calls = []

    def handler(text):
        calls.append(text)
        if text == "boom":
            raise RuntimeError("kaput")
        return "ok"

    loop = serve(handler)
    form = sxp.parse_one(EngineClient(loop.server.path).request("boom"))
    assert form[0] == "err" and sxp.child_value(form, "errno") == "5"
    assert "kaput" in sxp.child_value(form, "message")
    assert EngineClient(loop.server.path).request("fine") == "ok"


def test_oversized_request(serve):
    loop = serve(max_request=1000)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(loop.server.path)
    try:
        s.sendall(b"x" * 5000)
    except (BrokenPipeError, ConnectionResetError):
        pass
    reply = s.recv(1000)
    s.close()
    assert reply.startswith(b"(err (errno 7)")
    assert EngineClient(loop.server.path).request("a") == "echo a"


def test_stuck_client_times_out(serve):
    loop = serve(timeout=0.3)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(loop.server.path)
    s.sendall(b"(vnet.li")
    assert EngineClient(loop.server.path).request("b") == "echo b"
    reply = s.recv(1000)
    assert reply.startswith(b"(err (errno 110)") and b"one complete s-expression" in reply
    s.close()


def test_same_namespace_caller_accepted_by_default(serve):
    loop = serve()
    assert not loop.server.allow_foreign_netns
    assert EngineClient(loop.server.path).request("c") == "echo c"


def test_stale_socket_replaced_live_or_other_refused(tmp_path):
    path = str(tmp_path / "s.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()                                  # the file stays, nobody listens
    sel = selectors.DefaultSelector()
    server = ControlServer(path, str, sel)
    server.listen()
    with pytest.raises(ControlSocketError, match="in use by a running engine"):
        ControlServer(path, str, selectors.DefaultSelector()).listen()
    server.close()
    other = tmp_path / "file"
    other.write_text("keep me")
    with pytest.raises(ControlSocketError, match="not a socket"):
        ControlServer(str(other), str, selectors.DefaultSelector()).listen()
    assert other.read_text() == "keep me"


def test_error_reply_form():
    assert error_reply(1, 'say "no"') == '(err (errno 1) (message \'say "no"\'))'


# -- framing: answered once one expression is complete (design.md 6) -----------------

def connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    return s


def read_to_eof(s: socket.socket) -> str:
    chunks = []
    while True:
        data = s.recv(65536)
        if not data:
            s.close()
            return b"".join(chunks).decode()
        chunks.append(data)


def nothing_yet(s: socket.socket) -> bool:
    s.settimeout(0.2)
    try:
        s.recv(1)
    except TimeoutError:
        return True
    finally:
        s.settimeout(5)
    return False


def test_client_that_never_half_closes_gets_reply_and_eof(engine):
    engine.execute("(vnet.add (id 97))")
    s = connect(engine.path)
    started = time.monotonic()
    s.sendall(b"(vnet.list)")                       # as Xen's vn writes it: no half-close
    (form,) = sxp.parse_all(read_to_eof(s))
    assert time.monotonic() - started < 2
    assert sxp.child_value(form, "vnetif") == "vnif0097"


def test_expression_in_pieces_answered_when_complete(engine):
    s = connect(engine.path)
    for piece in (b"(vnet.add ", b"(id 97) # a comment )))\n", b"(note 'x)y'"):
        s.sendall(piece)
        assert nothing_yet(s) and engine.vnets == {}
    s.sendall(b")")
    assert nothing_yet(s)
    s.sendall(b")")
    assert read_to_eof(s) == ""
    assert engine.vnets == {"0000:0000:0000:0000:0000:0000:0000:0097": ("vnif0097", "none")}
    s = connect(engine.path)
    s.sendall(b"vnet.list")                         # an atom alone may still grow
    assert nothing_yet(s)
    s.sendall(b"\n")
    assert "not a command" in err(read_to_eof(s))[1]


def test_incomplete_expression_then_eof_answered_as_before(engine):
    s = connect(engine.path)
    s.sendall(b"(vnet.add (id 97)")
    assert nothing_yet(s)
    s.shutdown(socket.SHUT_WR)
    errno_, message = err(read_to_eof(s))
    assert errno_ == errno.EINVAL and "cannot parse request" in message
    assert engine.vnets == {}


def test_client_closing_without_reading_still_runs_the_command(engine, caplog):
    caplog.set_level(logging.DEBUG)
    for _ in range(2):                              # the second one is answered EEXIST
        s = connect(engine.path)
        s.sendall(b"(vnet.add (id 97))")            # Xen's vn: write, then close
        s.close()
    assert wait_until(lambda: len(engine.sent("vnet.add")) == 2)
    assert list(engine.vnets) == ["0000:0000:0000:0000:0000:0000:0000:0097"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_caller_gone_before_the_reply_is_logged_at_debug_only(serve, caplog):
    caplog.set_level(logging.DEBUG)
    closed = threading.Event()

    def handler(text):
        closed.wait(5)                              # answer only once the caller left
        return "x" * 100000

    loop = serve(handler)
    s = connect(loop.server.path)
    s.sendall(b"(vnet.list)")
    s.close()
    closed.set()
    assert wait_until(lambda: any("left before its reply" in r.getMessage()
                                  for r in caplog.records))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert EngineClient(loop.server.path).request("(a)") == "x" * 100000


def test_bytes_after_the_expression_do_not_reset_the_reply(serve):
    written = threading.Event()

    def handler(text):
        written.wait(5)                             # the newline is there, unread
        return "reply"

    loop = serve(handler)
    s = connect(loop.server.path)
    s.sendall(b"(vnet.list)")
    time.sleep(0.2)
    s.sendall(b"\n")
    time.sleep(0.1)
    written.set()
    assert read_to_eof(s) == "reply"               # not ECONNRESET after it


@pytest.mark.parametrize("half_close", [False, True])
def test_second_expression_on_one_connection_refused(engine, half_close):
    s = connect(engine.path)
    s.sendall(b"(vnet.add (id 97)) (vnet.add (id 98))")
    if half_close:
        s.shutdown(socket.SHUT_WR)
    errno_, message = err(read_to_eof(s))
    assert errno_ == errno.EINVAL
    assert message.startswith("one s-expression per connection: more follows "
                              "(vnet.add (id 97))")
    assert engine.vnets == {} and engine.requests == []


def test_slow_client_answered_when_complete_within_the_deadline(serve):
    loop = serve(timeout=1.0)
    s = connect(loop.server.path)
    for piece in (b"(vnet", b".li", b"st)"):
        time.sleep(0.2)
        s.sendall(piece)
    assert read_to_eof(s) == "echo (vnet.list)"
    s = connect(loop.server.path)
    s.sendall(b"(vnet")
    started = time.monotonic()
    reply = read_to_eof(s)
    assert reply.startswith("(err (errno 110)") and 0.5 < time.monotonic() - started < 3


def wait_until(check, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()
