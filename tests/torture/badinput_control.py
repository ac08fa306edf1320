"""Malformed control-socket messages, and a raw client to send them.

The control protocol (vdisk/control/protocol.py) is JSON lines; every
message here is wrong in one way: not JSON, not an object, wrong version or
types, unknown operations, bad arguments, binary, NUL, deep nesting, a line
over the limit. Each one must get an error reply (``ok: false``, one-line
message) or a closed connection, and must change nothing.
"""

from __future__ import annotations

import json
import socket
import threading

from vdisk.control.protocol import MAX_LINE


def req(op, args=None, **top) -> bytes:
    msg = {"v": 1, "id": 7, "op": op}
    if args is not None:
        msg["args"] = args
    msg.update(top)
    return json.dumps(msg).encode() + b"\n"


MESSAGES: list[tuple[str, bytes]] = [
    ("garbage", b"garbage\n"),
    ("empty line", b"\n"),
    ("crlf", b"\r\n"),
    ("open brace", b"{\n"),
    ("truncated JSON", b'{"v":1,"id":1,"op":"info"\n'),
    ("array", b"[]\n"),
    ("null", b"null\n"),
    ("number", b"42\n"),
    ("string", b'"hello"\n'),
    ("empty object", b"{}\n"),
    ("only version", b'{"v":1}\n'),
    ("version 2", b'{"v":2,"id":1,"op":"hello"}\n'),
    ("version as string", b'{"v":"1","id":1,"op":"hello"}\n'),
    ("version true", b'{"v":true,"id":1,"op":"hello"}\n'),
    ("version 1.0", b'{"v":1.0,"id":1,"op":"hello"}\n'),
    ("id string", b'{"v":1,"id":"1","op":"hello"}\n'),
    ("id true", b'{"v":1,"id":true,"op":"hello"}\n'),
    ("id float", b'{"v":1,"id":1.5,"op":"hello"}\n'),
    ("id infinite", b'{"v":1,"id":1e999,"op":"hello"}\n'),
    ("id NaN", b'{"v":1,"id":NaN,"op":"hello"}\n'),
    ("id of 5000 digits", b'{"v":1,"id":' + b"9" * 5000 + b',"op":"hello"}\n'),
    ("op number", b'{"v":1,"id":1,"op":5}\n'),
    ("op null", b'{"v":1,"id":1,"op":null}\n'),
    ("op missing", b'{"v":1,"id":1}\n'),
    ("op shell", req("rm -rf /")),
    ("op dunder", req("__class__")),
    ("op method name", req("dispatch")),
    ("op upper case", req("HELLO")),
    ("op with NUL", req("hello\0")),
    ("args list", req("info", [])),
    ("args string", req("info", "x")),
    ("args unknown key", req("info", {"x": 1})),
    ("create: name number", req("snapshot_create", {"name": 5})),
    ("create: name null", req("snapshot_create", {"name": None})),
    ("create: name list", req("snapshot_create", {"name": ["a"]})),
    ("create: name empty", req("snapshot_create", {"name": ""})),
    ("create: name path", req("snapshot_create", {"name": "../../etc/x"})),
    ("create: name 10 kB", req("snapshot_create", {"name": "a" * 10000})),
    ("create: name NUL", req("snapshot_create", {"name": "a\0b"})),
    ("create: name newline", req("snapshot_create", {"name": "a\nb"})),
    ("create: name deferred prefix", req("snapshot_create", {"name": "~sentinel"})),
    ("create: no name", req("snapshot_create", {})),
    ("create: extra argument", req("snapshot_create", {"name": "ok1", "force": True})),
    ("create: existing", req("snapshot_create", {"name": "sentinel"})),
    ("delete: missing", req("snapshot_delete", {"name": "nope"})),
    ("delete: name number", req("snapshot_delete", {"name": 0})),
    ("revert: clients connected", req("snapshot_revert", {"name": "sentinel"})),
    ("revert: missing", req("snapshot_revert", {"name": "nope"})),
    ("resize: string", req("resize", {"size": "big"})),
    ("resize: negative", req("resize", {"size": -1})),
    ("resize: zero", req("resize", {"size": 0})),
    ("resize: 2^70", req("resize", {"size": 1 << 70})),
    ("resize: float", req("resize", {"size": 1.5e6})),
    ("resize: bool", req("resize", {"size": True})),
    ("resize: shrink", req("resize", {"size": 1 << 20})),
    ("resize: unaligned", req("resize", {"size": (4 << 20) + 1})),
    ("list: exclusive string", req("snapshot_list", {"exclusive": "yes"})),
    ("flush: argument", req("flush", {"now": 1})),
    ("compact: argument", req("compact", {"x": 1})),
    ("shutdown: argument", req("shutdown", {"x": 1})),
    ("binary", bytes(range(256)).replace(b"\n", b"") + b"\n"),
    ("non-UTF-8", b"\xff\xfe\xfd\n"),
    ("non-UTF-8 in a string", b'{"v":1,"id":1,"op":"\xff"}\n'),
    ("NULs", b"\0" * 100 + b"\n"),
    ("NUL after JSON", b'{"v":1,"id":1,"op":"hello"}\0\n'),
    ("deep nesting", b"[" * 100000 + b"\n"),
    ("deep object nesting", b'{"a":' * 50000 + b"\n"),
]

# These end the conversation; each is sent alone.
CLOSING: list[tuple[str, bytes]] = [
    ("line over the limit", b"x" * (MAX_LINE + 10) + b"\n"),
    ("partial line, then EOF", b'{"v":1,"id":1,"op":"hel'),
    ("no newline at all, then EOF", b"garbage"),
]


def converse(path: str, data: bytes, replies: int, timeout: float = 10.0) -> tuple[list[dict | str], bool]:
    """Send ``data`` on a new connection, half-close, read up to ``replies``
    lines; (replies, closed by the server). A reply that is not JSON is
    returned as its raw text."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    out: list[dict | str] = []
    try:
        s.connect(path)

        def send():
            try:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
            except OSError:      # the server may close first; that is an answer too
                pass
        # Sending and reading at once: a server that answers line by line
        # blocks on its replies until someone reads them.
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        buf = b""
        while len(out) < replies:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf and len(out) < replies:
                line, buf = buf.split(b"\n", 1)
                try:
                    out.append(json.loads(line))
                except ValueError:
                    out.append(line.decode(errors="replace"))
        try:
            closed = s.recv(1) == b""
        except (socket.timeout, ConnectionResetError):
            closed = False
        return out, closed
    finally:
        s.close()
        sender.join(timeout)


def reply_problem(what: str, reply) -> str | None:
    """Why ``reply`` is not an acceptable answer to a bad message (None if it is)."""
    if not isinstance(reply, dict):
        return f"{what}: reply is not JSON: {reply!r}"[:300]
    if reply.get("ok") is not False:
        return f"{what}: accepted: {reply}"[:300]
    err = reply.get("error")
    if not isinstance(err, dict) or not all(isinstance(err.get(k), t) for k, t in
                                           (("class", str), ("message", str), ("exit_code", int))):
        return f"{what}: malformed error reply {reply}"[:300]
    if "\n" in err["message"] or not err["message"]:
        return f"{what}: error message is not one line: {err['message']!r}"[:300]
    if "internal error" in err["message"]:
        return f"{what}: escaped the protocol's checks: {err['class']}: {err['message']}"[:300]
    return None
