"""A raw NBD client for what libnbd will not send: hostile handshakes.

libnbd validates export names (UTF-8, at most 4096 bytes) and frames every
message correctly; this speaks the fixed-newstyle handshake by hand over a
unix socket so a test can send non-UTF-8 names, names longer than the
protocol allows, lengths that lie, unknown options and garbage commands.
Each call reports what the server did (a reply, or closing the connection);
none of them may take the server down.
"""

from __future__ import annotations

import re
import socket
import struct

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_INFO, OPT_GO = 1, 2, 3, 6, 7
REP_ACK, REP_SERVER, REP_INFO = 1, 2, 3
CMD_READ, CMD_WRITE, CMD_DISC = 0, 1, 2
FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES = 1, 2


class Closed(Exception):
    """The server closed the connection."""


def _recv(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise Closed(f"closed after {len(out)} of {n} bytes")
        out += chunk
    return out


class RawClient:
    """One connection in the option phase (after the greeting)."""

    def __init__(self, path: str, timeout: float = 10.0):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)
        greeting = _recv(self.s, 18)
        assert greeting[:8] == NBDMAGIC and struct.unpack(">Q", greeting[8:16])[0] == IHAVEOPT, greeting
        self.s.sendall(struct.pack(">I", FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES))

    def close(self):
        self.s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def option(self, opt: int, data: bytes, length: int | None = None) -> list[tuple[int, bytes]]:
        """Send one option (``length`` may lie); the replies up to the final one."""
        self.s.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data) if length is None else length) + data)
        replies = []
        while True:
            magic, ropt, rtype, rlen = struct.unpack(">QIII", _recv(self.s, 20))
            assert magic == REPLY_MAGIC, f"bad reply magic {magic:#x}"
            body = _recv(self.s, rlen) if rlen else b""
            replies.append((rtype, body))
            if rtype == REP_ACK or rtype & 0x80000000:
                return replies

    def go(self, name: bytes) -> list[tuple[int, bytes]]:
        return self.option(OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))

    def list_names(self) -> list[bytes]:
        names = []
        for rtype, body in self.option(OPT_LIST, b""):
            if rtype == REP_SERVER:
                n = struct.unpack(">I", body[:4])[0]
                names.append(body[4:4 + n])
        return names

    def request(self, cmd: int, offset: int, length: int, flags: int = 0, payload: bytes = b"",
                magic: int = REQUEST_MAGIC, cookie: int = 1):
        """Send one transmission-phase request (after an acknowledged GO)."""
        self.s.sendall(struct.pack(">IHHQQI", magic, flags, cmd, cookie, offset, length) + payload)

    def reply(self, data_len: int = 0) -> tuple[int, bytes]:
        """(error, data) of one simple reply."""
        magic, err, _cookie = struct.unpack(">IIQ", _recv(self.s, 16))
        assert magic == 0x67446698, f"bad simple reply magic {magic:#x}"
        return err, (_recv(self.s, data_len) if data_len and not err else b"")


def outcome(fn, *args) -> str:
    """What the server did: 'ack', 'error N', or 'closed' (all acceptable)."""
    try:
        replies = fn(*args)
    except (Closed, ConnectionError, socket.timeout) as e:
        return "closed" if not isinstance(e, socket.timeout) else "timeout"
    rtype = replies[-1][0]
    return "ack" if rtype == REP_ACK else f"error {rtype & 0x7fffffff}"


TRACEBACK_EXC = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning))(?::|$)", re.M)


def unexpected_exceptions(log: str) -> list[str]:
    """Exception lines in a server log other than the plugin's own ClientError.

    nbdkit's Python plugin prints a traceback for every exception a callback
    raises; the plugin raises ClientError (one line, with an errno) for each
    refused request. Anything else escaped its error mapping: a bug.
    """
    out = []
    for block in log.split("Traceback (most recent call last):")[1:]:
        names = [m.group(1) for m in TRACEBACK_EXC.finditer(block)]
        if not names or any(n != "ClientError" for n in names):
            tail = [ln for ln in block.strip().splitlines() if ln.strip()][-3:]
            out.append(" | ".join(ln.strip() for ln in tail))
    return out
