"""Find the live control server of a disk and talk to it like a Disk.

:func:`find_server` answers "is this disk held by a running front end?":

* no ``DISK/control.sock``, or one nobody listens on (connection refused:
  the server died without removing it) - ``None``; the caller opens the disk
  itself, and the writer lock tells whether that is allowed;
* a socket owned by another user, or not a socket - :class:`ForeignSocket`:
  vdisk will not send requests to a process it cannot trust;
* a server that answers ``hello`` with our protocol version for this very
  disk - a :class:`ControlClient`.

:class:`ControlClient` has the method names of :class:`vdisk.Disk` for the
operations the control protocol carries (``info``, ``snapshots``,
``create_snapshot``, ``delete_snapshot``, ``revert``, ``rename_snapshot``, ``resize``, ``flush``,
``close``; plus ``shutdown``), so CLI code runs unchanged on either. Server errors come back as
the same :mod:`vdisk.errors` class with the same message and exit code.
"""

from __future__ import annotations

import errno
import os
import stat

from vdisk.disk import SnapshotInfo
from vdisk.errors import Busy, VdiskError

from . import protocol, unixsock

CONNECT_TIMEOUT = 5.0
# Snapshot deletion sweeps trees on the server; give it time before giving up.
REQUEST_TIMEOUT = 600.0


class ForeignSocket(Busy):
    """DISK/control.sock exists but is not a socket we may trust."""


def socket_path(disk_path) -> str:
    return os.path.join(os.path.abspath(os.fspath(disk_path)), protocol.SOCKET_NAME)


def find_server(disk_path) -> "ControlClient | None":
    """A connected client if a live server holds ``disk_path``, else None."""
    path = socket_path(disk_path)
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat.S_ISSOCK(st.st_mode):
        raise ForeignSocket(f"{path} is not a socket; remove it if no vdisk server is running")
    if st.st_uid not in (os.getuid(), 0):
        raise ForeignSocket(f"control socket {path} belongs to uid {st.st_uid}, not to you "
                            f"(uid {os.getuid()}): refusing to use it")
    try:
        sock = unixsock.connect(path, CONNECT_TIMEOUT)
    except (ConnectionRefusedError, FileNotFoundError):
        return None   # stale: its server is gone
    except PermissionError:
        raise ForeignSocket(f"no permission to connect to control socket {path}") from None
    except OSError as e:
        if e.errno == errno.ENOENT:
            return None
        raise Busy(f"cannot connect to control socket {path}: {e.strerror or e}") from None
    client = ControlClient(sock, path)
    try:
        client.hello = client.call("hello")
        want = os.path.realpath(disk_path)
        if client.hello.get("disk") != want:
            raise ForeignSocket(f"control socket {path} serves {client.hello.get('disk')!r}, not {want}")
    except BaseException:
        client.close()
        raise
    return client


class ControlClient:
    """A disk proxy over one control connection. Use :func:`find_server`."""

    def __init__(self, sock, path: str):
        self._sock = sock
        self._rfile = sock.makefile("rb")
        self._next_id = 1
        self.path = path
        self.hello: dict = {}

    # ------------------------------------------------------------ Disk API

    @property
    def readonly(self) -> bool:
        return bool(self.hello.get("readonly"))

    @property
    def owner(self) -> str:
        return f"{self.hello.get('owner', 'a vdisk server')} (PID {self.hello.get('pid', '?')})"

    def info(self) -> dict:
        return self.call("info")

    def snapshots(self, exclusive: bool = True) -> list[SnapshotInfo]:
        return [SnapshotInfo(**s) for s in self.call("snapshot_list", exclusive=exclusive)]

    def create_snapshot(self, name: str) -> SnapshotInfo:
        return SnapshotInfo(**self.call("snapshot_create", name=name))

    def delete_snapshot(self, name: str) -> int:
        """Blocks freed, as Disk.delete_snapshot returns."""
        result = self.call("snapshot_delete", name=name)
        freed = result.get("freed_blocks") if isinstance(result, dict) else None
        if not isinstance(freed, int) or isinstance(freed, bool) or freed < 0:
            raise protocol.ProtocolError("snapshot_delete: the server sent no block count")
        return freed

    def revert(self, name: str) -> None:
        self.call("snapshot_revert", name=name)

    def rename_snapshot(self, old: str, new: str) -> SnapshotInfo:
        return SnapshotInfo(**self.call("snapshot_rename", name=old, new_name=new))

    def resize(self, size: int) -> None:
        self.call("resize", size=size)

    def compact(self) -> int:
        return self.call("compact")

    def flush(self) -> None:
        self.call("flush")

    def shutdown(self) -> None:
        """Ask the front end to flush, close the disk and stop serving I/O."""
        self.call("shutdown")

    def close(self):
        if self._sock is not None:
            self._rfile.close()
            self._sock.close()
            self._sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------ transport

    def call(self, op: str, **args):
        """Send one request and return its result; server errors are raised."""
        if self._sock is None:
            raise VdiskError("control connection is closed")
        req_id = self._next_id
        self._next_id += 1
        try:
            self._sock.settimeout(REQUEST_TIMEOUT)
            self._sock.sendall(protocol.request(req_id, op, args))
            line = self._rfile.readline(protocol.MAX_LINE + 1)
        except OSError as e:
            raise Busy(f"control server at {self.path} stopped answering: {e.strerror or e}") from None
        if not line:
            raise Busy(f"control server at {self.path} closed the connection (did it stop?)")
        msg = protocol.decode_response(line)
        if msg.get("id") not in (req_id, None):
            raise protocol.ProtocolError(f"control reply for request {msg.get('id')}, expected {req_id}")
        if not msg["ok"]:
            raise protocol.exception_from(msg["error"])
        return msg.get("result")
