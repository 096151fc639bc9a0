"""Hostile XML-RPC clients for the soak in test_xmlrpc_hostile.py, run as a
child process (as another uid, so the server's slot accounting sees a caller
of its own on the unix socket): ``python3 hostile_clients.py SPEC_JSON``.

SPEC is ``{"targets": {name: ["unix", path] | ["tcp", port] | ["tls", port]},
"connections": N}``.  N connections, spread over the targets and the attacks,
each attacking again as soon as the server drops it, until stdin closes;
then the replies seen (status codes, by attack) go to stdout as JSON.
Only unix sockets and 127.0.0.1.
"""

from __future__ import annotations

import collections
import itertools
import json
import socket
import ssl
import sys
import threading
import time

HEAD = b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
ENTITIES = "".join(f'<!ENTITY e{i} "{"".join(f"&e{i - 1};" for _ in range(10))}">'
                   for i in range(1, 10))
BOMB = (f'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY e0 "lol">{ENTITIES}]>'
        "<methodCall><methodName>xend_vnets</methodName><params><param><value>"
        "<string>&e9;</string></value></param></params></methodCall>").encode()


def connect(target: list) -> socket.socket:
    kind, where = target
    if kind == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(where)
        return s
    s = socket.create_connection(("127.0.0.1", where), timeout=10)
    if kind == "tls":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        s = context.wrap_socket(s)
    return s


def reply_status(s: socket.socket) -> str:
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError as e:
        return type(e).__name__
    return data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "closed"


def trickle(s, stop) -> str:
    s.sendall(HEAD + b"X-Slow: ")
    while not stop.is_set():
        s.sendall(b"a")
        time.sleep(0.1)
    return "held"


def long_line(s, stop) -> str:
    s.sendall(HEAD + b"X-Long: " + b"a" * 20000 + b"\r\n\r\n")
    return reply_status(s)


def many_bytes(s, stop) -> str:
    s.sendall(HEAD + b"".join(b"X-%d: %s\r\n" % (i, b"b" * 4000) for i in range(12)) + b"\r\n")
    return reply_status(s)


def entity_bomb(s, stop) -> str:
    s.sendall(HEAD + b"Content-Length: %d\r\n\r\n" % len(BOMB) + BOMB)
    status = reply_status(s)
    return status


def unfinished_body(s, stop) -> str:
    s.sendall(HEAD + b"Content-Length: 1048576\r\n\r\n" + b"<" * 524288)
    return reply_status(s)      # the server gives up at the request's deadline


def silent(s, stop) -> str:
    return reply_status(s)


ATTACKS = {f.__name__: f for f in (trickle, long_line, many_bytes, entity_bomb,
                                   unfinished_body, silent)}


def worker(target: list, attack: str, stop: threading.Event, seen: collections.Counter,
           lock: threading.Lock) -> None:
    while not stop.is_set():
        kind = target[0]
        try:
            if attack == "silent" and kind == "tls":
                s = socket.create_connection(("127.0.0.1", target[1]), timeout=10)
            else:
                s = connect(target)
            with s:
                outcome = ATTACKS[attack](s, stop)
        except (OSError, ValueError) as e:
            outcome = type(e).__name__
        with lock:
            seen[f"{kind} {attack} {outcome}"] += 1
        time.sleep(0.05)


def main() -> None:
    spec = json.loads(sys.argv[1])
    stop, lock, seen = threading.Event(), threading.Lock(), collections.Counter()
    plan = itertools.cycle(itertools.product(spec["targets"].values(), ATTACKS))
    threads = [threading.Thread(target=worker, args=(target, attack, stop, seen, lock),
                                daemon=True)
               for target, attack in itertools.islice(plan, spec["connections"])]
    for t in threads:
        t.start()
    print("started", flush=True)
    sys.stdin.read()
    stop.set()
    with lock:
        print(json.dumps(dict(seen)), flush=True)


if __name__ == "__main__":
    main()
