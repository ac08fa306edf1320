"""The control server: lets the CLI change a disk that a front end holds open.

A front end (the nbdkit plugin, the FUSE mount) owns the disk's writer lock,
so ``vdisk snapshot create`` and friends cannot open the disk themselves.
Instead the front end runs a :class:`ControlServer` beside its own work; the
CLI finds ``DISK/control.sock`` (see :mod:`vdisk.control.client`) and sends
its request there. The wire format is :mod:`vdisk.control.protocol`.

API (shared by every front end; keep it stable)::

    server = ControlServer(disk, owner="vdisk serve (nbdkit)")
    server.on_change = refresh      # optional: called after snapshot
                                    # create/delete/revert/rename and resize
    server.guard = check            # optional: check(op, args) may raise a
                                    # VdiskError to refuse a change, and may
                                    # return a context manager the change
                                    # (and on_change) then runs inside
    server.on_shutdown = stop       # optional: op "shutdown" calls stop(),
                                    # which must flush and close the disk
    server.exclusive = turn         # optional: every op but hello runs
                                    # inside ``with turn():`` (see below)
    server.start()                  # bind DISK/control.sock (0600), serve in
                                    # a daemon thread
    ...
    server.close()                  # stop serving, unlink the socket

Threads: :meth:`start` must run in the process and after the fork that will
serve (nbdkit: ``after_fork``), because threads do not survive a fork. The
server calls the disk from its own threads; :class:`vdisk.Disk` serialises
calls with its lock, so requests interleave with the front end's I/O at call
boundaries: a snapshot holds every write that returned before it and none
that started after it.

``guard``: a check that passes is only true while nothing new uses what the
change touches, so a front end whose clients can connect or open files on
their own threads returns a context manager from ``check``: it marks the
snapshot (or the running point) as changing under the front end's own lock,
the front end refuses new users of it while marked, and the mark is cleared
on exit, after the change and ``on_change``. Check and mark happen under one
lock, so no user slips in between.

``exclusive``: a front end that must never have a control operation run
beside its own I/O (the nbdkit plugin closes the disk on ``shutdown``; the
FUSE front end runs one operation at a time) gives a context manager factory;
every operation but ``hello`` runs inside it.

Security: the socket is created mode 0600 under a temporary name and renamed
into place, so there is no moment when others could connect; every accepted
peer is also checked (``SO_PEERCRED``) to be this uid or root.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import struct
import threading

from vdisk.convert.state import status as conversion_status
from vdisk.errors import Busy, InvalidArgument, VdiskError

from . import protocol, unixsock

log = logging.getLogger("vdisk.control")

IDLE_TIMEOUT = 60.0        # seconds a connection may stay silent
MAX_CONNECTIONS = 16
ACCEPT_POLL = 0.25         # how soon close() is noticed by the accept loop


class ControlServer:
    """Serve control requests for ``disk`` on ``DISK/control.sock``.

    ``owner`` says who holds the disk (shown by ``hello``, e.g. "vdisk serve").
    """

    def __init__(self, disk, owner: str):
        self.disk = disk
        self.owner = owner
        self.path = os.path.join(os.path.abspath(disk.path), protocol.SOCKET_NAME)
        self.on_change = None
        self.guard = None
        self.on_shutdown = None
        self.exclusive = None
        self._sock: socket.socket | None = None
        self._ident: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._conns = threading.BoundedSemaphore(MAX_CONNECTIONS)

    # ------------------------------------------------------------ lifecycle

    def start(self):
        """Bind the socket (replacing a stale one) and serve in a daemon thread."""
        if self._thread is not None:
            raise InvalidArgument("control server already started")
        self._remove_stale()
        tmp = os.path.join(os.path.dirname(self.path), f".control.{os.getpid()}.tmp")
        _unlink_socket(tmp)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            unixsock.bind(s, tmp)
            os.chmod(tmp, 0o600)
            s.listen(MAX_CONNECTIONS)
            os.rename(tmp, self.path)
            st = os.lstat(self.path)
        except BaseException:
            s.close()
            _unlink_socket(tmp)
            raise
        s.settimeout(ACCEPT_POLL)
        self._sock = s
        self._ident = (st.st_dev, st.st_ino)
        self._thread = threading.Thread(target=self._accept_loop, name="vdisk-control", daemon=True)
        self._thread.start()

    def close(self):
        """Stop accepting, wait briefly for the accept loop, remove the socket."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        # Unlink only our own socket: a successor may already have bound the name.
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._ident:
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _remove_stale(self):
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise InvalidArgument(f"{self.path} exists and is not a socket; remove it")
        if unixsock.answers(self.path):
            raise Busy(f"another server already answers on {self.path}")
        _unlink_socket(self.path)

    # ------------------------------------------------------------ serving

    def _accept_loop(self):
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as e:
                if self._stopping.is_set():
                    return
                log.warning("control socket accept failed: %s", e)
                self._stopping.wait(ACCEPT_POLL)
                continue
            if not self._conns.acquire(blocking=False):
                _reply_and_close(conn, None, Busy(f"too many control connections (limit {MAX_CONNECTIONS})"))
                continue
            t = threading.Thread(target=self._serve_conn, args=(conn,), name="vdisk-control-conn", daemon=True)
            t.start()

    def _serve_conn(self, conn: socket.socket):
        try:
            uid = _peer_uid(conn)
            if uid not in (os.getuid(), 0):
                _reply_and_close(conn, None, Busy(f"control socket {self.path} belongs to uid {os.getuid()}, "
                                                  f"not to uid {uid}"))
                return
            conn.settimeout(IDLE_TIMEOUT)
            with conn, conn.makefile("rb") as rfile:
                while not self._stopping.is_set():
                    line = rfile.readline(protocol.MAX_LINE + 1)
                    if not line:
                        return
                    if len(line) > protocol.MAX_LINE:
                        conn.sendall(protocol.error(None, protocol.ProtocolError(
                            f"control message longer than {protocol.MAX_LINE} bytes")))
                        return
                    conn.sendall(self._handle(line))
        except OSError as e:   # peer went away or stayed silent too long
            log.debug("control connection ended: %s", e)
        finally:
            self._conns.release()

    def _handle(self, line: bytes) -> bytes:
        req_id = None
        try:
            req_id, op, args = protocol.decode_request(line)
            if self.exclusive is None or op == "hello":
                return protocol.ok(req_id, self.dispatch(op, args))
            with self.exclusive():
                return protocol.ok(req_id, self.dispatch(op, args))
        except VdiskError as e:
            return protocol.error(req_id if req_id is not None else protocol.request_id_of(e), e)
        except Exception as e:   # a bug must not stop the server; the client gets its message
            log.exception("control request failed")
            return protocol.error(req_id, VdiskError(f"internal error in the control server: {e}"))

    def dispatch(self, op: str, args: dict):
        """Run one request (already decoded); returns its JSON result."""
        d = self.disk
        if op == "hello":
            _check_args(op, args, ())
            return {"server": "vdisk", "version": protocol.VERSION, "disk": os.path.realpath(d.path),
                    "owner": self.owner, "pid": os.getpid(), "readonly": bool(d.readonly)}
        if op == "info":
            _check_args(op, args, ())
            return {**d.info(), "conversion": conversion_status(d)}
        if op == "snapshot_list":
            _check_args(op, args, ("exclusive",))
            exclusive = args.get("exclusive", True)
            if not isinstance(exclusive, bool):
                raise protocol.ProtocolError("snapshot_list: 'exclusive' must be true or false")
            return [s.__dict__ for s in d.snapshots(exclusive=exclusive)]
        if op == "flush":
            _check_args(op, args, ())
            d.flush()
            return None
        if op == "compact":
            _check_args(op, args, ())
            return d.compact()
        if op == "shutdown":
            _check_args(op, args, ())
            if self.on_shutdown is None:
                raise InvalidArgument(f"{self.owner} cannot be shut down over the control socket")
            self.on_shutdown()
            return None
        if op in ("snapshot_create", "snapshot_delete", "snapshot_revert"):
            _check_args(op, args, ("name",), required=("name",))
            name = args["name"]
            if not isinstance(name, str):
                raise protocol.ProtocolError(f"{op}: 'name' must be a string")
            with self._guarded(op, args):
                if op == "snapshot_create":
                    result = d.create_snapshot(name).__dict__
                elif op == "snapshot_delete":
                    result = {"freed_blocks": d.delete_snapshot(name)}
                else:
                    d.revert(name)
                    result = None
                self._changed(op)
            return result
        if op == "snapshot_rename":
            _check_args(op, args, ("name", "new_name"), required=("name", "new_name"))
            name, new_name = args["name"], args["new_name"]
            if not isinstance(name, str) or not isinstance(new_name, str):
                raise protocol.ProtocolError(f"{op}: 'name' and 'new_name' must be strings")
            with self._guarded(op, args):
                result = d.rename_snapshot(name, new_name).__dict__
                self._changed(op)
            return result
        if op == "resize":
            _check_args(op, args, ("size",), required=("size",))
            size = args["size"]
            if not isinstance(size, int) or isinstance(size, bool):
                raise protocol.ProtocolError("resize: 'size' must be an integer")
            with self._guarded(op, args):
                d.resize(size)
                self._changed(op)
            return None
        raise protocol.ProtocolError(f"unknown control operation {op!r} (known: {', '.join(protocol.OPS)})")

    def _guarded(self, op, args):
        held = self.guard(op, args) if self.guard is not None else None
        return held if held is not None else contextlib.nullcontext()

    def _changed(self, op):
        if self.on_change is None:
            return
        try:
            self.on_change()
        except Exception:   # the change is done and committed; a stale listing is not its failure
            log.exception("on_change after %s failed", op)


def _check_args(op: str, args: dict, allowed: tuple, required: tuple = ()):
    extra = sorted(set(args) - set(allowed))
    if extra:
        raise protocol.ProtocolError(f"{op}: unknown argument(s) {', '.join(extra)}")
    missing = [k for k in required if k not in args]
    if missing:
        raise protocol.ProtocolError(f"{op}: missing argument(s) {', '.join(missing)}")


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def _reply_and_close(conn: socket.socket, req_id, exc: VdiskError):
    try:
        conn.settimeout(1.0)
        conn.sendall(protocol.error(req_id, exc))
    except OSError:
        pass
    finally:
        conn.close()


def _unlink_socket(path: str):
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
