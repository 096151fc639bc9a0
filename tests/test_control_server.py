"""ControlServer on its own (no root): one request per connection, caps, deadlines, paths."""

from __future__ import annotations

import os
import selectors
import socket
import stat
import threading
import time

import pytest

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
    assert s.recv(1000).startswith(b"(err (errno 110)")
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
