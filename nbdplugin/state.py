"""The NBD plugin's process-wide state: the disk, its control server, and who
is connected to which export.

Imported by ``plugin.py`` once vdisk is importable in nbdkit's interpreter
(``after_fork``); nothing here touches nbdkit, so it runs anywhere.
"""

from __future__ import annotations

import contextlib
import threading

from vdisk.convert.online import open_disk
from vdisk.control.server import ControlServer
from vdisk.errors import Busy, NotFound


class ServerState:
    """Process-wide state: the disk, the control server, open exports.

    Every request runs inside ``request()`` and :meth:`shutdown` holds
    ``io``, so a stop requested over the control socket never closes the
    disk under a request. With ``parallel`` (nbdkit's parallel thread model,
    a rados: disk) requests share ``io`` (a :class:`RequestGate`) and run at
    once; otherwise ``io`` is a plain lock, one request at a time, as nbdkit
    serialises them anyway. Other control operations do not take it: the
    disk's own lock orders them with requests, and waiting for ``io`` (held
    across a whole request, Python overhead included) made ``snapshot
    create`` under a full-speed writer take 15-37 ms instead of 2-5 ms.
    """

    def __init__(self, path, readonly: bool, control: bool, owner: str, break_lock: bool = False,
                 parallel: bool = False):
        # An online conversion in progress gets its origin and carries on here.
        self.disk = open_disk(path, readonly=readonly, break_lock=break_lock)
        if parallel:
            self.io = RequestGate()
            self.request = self.io.shared
        else:
            self.io = threading.Lock()
            self.request = lambda: self.io
        self.closed = False
        self.users = {}                 # export name -> open connections
        self.users_lock = threading.Lock()
        self.changing = {}              # export name -> control op changing it (see guard)
        self.control = None
        if control and not readonly:
            try:
                self.control = ControlServer(self.disk, owner)
                self.control.guard = self.guard
                self.control.on_shutdown = self.shutdown
                self.control.start()
            except BaseException:
                self.disk.close()
                raise

    def guard(self, op, args):
        """Refuse changes that would pull data from under connected clients.

        Checked and marked under ``users_lock``, which :meth:`connect` takes
        too, and the mark lasts until the change is done: a client connecting
        in between is refused rather than handed an export that is going away
        or changing under it.
        """
        if op == "snapshot_delete":
            name = args["name"]
            why = "snapshot %r is exported to %d NBD connection(s); disconnect them first"
        elif op == "snapshot_rename":
            # The export's name is the snapshot's: a client of the old name
            # would be left on an export that no longer exists.
            name = args["name"]
            if not name:
                return None       # not a snapshot's export (the engine refuses the name)
            why = "snapshot %r is exported to %d NBD connection(s); disconnect them before renaming it"
        elif op == "snapshot_revert":
            name = ""
            why = "the disk has %d NBD connection(s) to its running point; disconnect them before reverting"
        else:
            return None
        with self.users_lock:
            n = self.users.get(name, 0)
            if n:
                raise Busy(why % ((name, n) if name else (n,)))
            self.changing[name] = op
        return self._until_changed(name)

    @contextlib.contextmanager
    def _until_changed(self, name):
        try:
            yield
        finally:
            with self.users_lock:
                self.changing.pop(name, None)

    def connect(self, name):
        """Count a new connection to export ``name``, unless it is changing."""
        with self.users_lock:
            op = self.changing.get(name)
            if op in ("snapshot_delete", "snapshot_rename"):
                # Going away: answer as for a name that no longer exists.
                raise NotFound("snapshot %r is being %s" % (name, "deleted" if op == "snapshot_delete"
                                                            else "renamed"))
            if op is not None:
                raise Busy("the running point is being reverted; connect again when it is done")
            self.users[name] = self.users.get(name, 0) + 1

    def disconnect(self, name):
        with self.users_lock:
            self.users[name] -= 1
            if not self.users[name]:
                del self.users[name]

    def shutdown(self):
        """Flush and close the disk now; later requests fail with ESHUTDOWN.

        nbdkit stops only when every client has disconnected, and a kernel
        client never does by itself; ``vdisk serve`` calls this (control op
        ``shutdown``) before it kills such an nbdkit, so no acknowledged
        write is lost and the writer lock is released.
        """
        with self.io:
            if self.closed:
                return
            self.closed = True
            self.disk.close()

    def close(self):
        try:
            if self.control is not None:
                self.control.close()
        finally:
            with self.io:
                self.closed = True
                self.disk.close()


class RequestGate:
    """Requests at once, a stop alone: ``with gate.shared():`` per request, ``with gate:`` to stop.

    ``with gate`` waits until no request runs and keeps new ones out until
    it ends; a stop that waits goes first, so a stream of requests cannot
    starve it.
    """

    __slots__ = ("_cond", "_running", "_exclusive", "_waiting", "_shared")

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._running = 0
        self._exclusive = False
        self._waiting = 0
        self._shared = _Shared(self)

    def shared(self) -> "_Shared":
        return self._shared

    def _free(self) -> bool:
        return not self._exclusive and not self._waiting

    def __enter__(self):
        with self._cond:
            self._waiting += 1
            try:
                self._cond.wait_for(lambda: not self._exclusive and not self._running)
            finally:
                self._waiting -= 1
            self._exclusive = True
        return self

    def __exit__(self, *exc):
        with self._cond:
            self._exclusive = False
            self._cond.notify_all()


class _Shared:
    """One request's hold on a :class:`RequestGate` (reusable, re-entered by every request)."""

    __slots__ = ("gate",)

    def __init__(self, gate: RequestGate):
        self.gate = gate

    def __enter__(self):
        g = self.gate
        with g._cond:
            if not g._free():
                g._cond.wait_for(g._free)
            g._running += 1

    def __exit__(self, *exc):
        g = self.gate
        with g._cond:
            g._running -= 1
            if not g._running:
                g._cond.notify_all()
