"""Unix socket paths of any length.

``sockaddr_un`` holds at most 107 bytes of path, and disks often live deeper
than that. A longer path is reached through ``/proc/self/fd/N/NAME``, where N
is an ``O_PATH`` descriptor of the socket's directory: the kernel resolves
the directory before the name, so only the short form must fit.
"""

from __future__ import annotations

import contextlib
import os
import socket

MAX_PATH = 107


@contextlib.contextmanager
def short_path(path: str):
    """Yield a path to ``path`` that fits in a ``sockaddr_un``."""
    if len(os.fsencode(path)) <= MAX_PATH:
        yield path
        return
    directory, name = os.path.split(os.path.abspath(path))
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY)
    try:
        short = f"/proc/self/fd/{fd}/{name}"
        if len(os.fsencode(short)) > MAX_PATH:
            raise OSError(f"socket name {name!r} is too long")
        yield short
    finally:
        os.close(fd)


def connect(path: str, timeout: float | None) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        with short_path(path) as p:
            s.connect(p)
    except BaseException:
        s.close()
        raise
    return s


def bind(s: socket.socket, path: str):
    with short_path(path) as p:
        s.bind(p)


def answers(path: str, timeout: float = 2.0) -> bool:
    """True if something accepts connections on ``path`` (a live server)."""
    try:
        connect(path, timeout).close()
        return True
    except OSError:
        return False
