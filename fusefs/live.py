"""Changes made over the control socket, as the mount shows them.

A mixin of :class:`vdisk.fusefs.fs.VdiskFS`: :meth:`LiveChanges.guard` refuses
(and, while the change runs, fences off) what would pull data from under
open files; :meth:`LiveChanges.refresh` re-reads the snapshot list after
the change and tells the kernel what to forget. Kernel notifications are
sent from their own thread, because sending one from the trio thread can
deadlock against a request the kernel is waiting on.

It uses these attributes of the file system: ``disk``, ``mountpoint``,
``image``, ``_lock``, ``_nodes``, ``_snaps``, ``_next_ino``, ``_notify``,
``_changing``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading

import pyfuse3

from vdisk.errors import Busy

from .nodes import DISK_INO, DISK_NAME, NOTIFY_WAIT, SNAP_DIR, SNAP_SUFFIX, SNAPDIR_INO, Node

log = logging.getLogger("vdisk.fusefs")


class LiveChanges:
    """Control-socket changes as the mount sees them (mixed into VdiskFS)."""

    def start_notifier(self):
        """Start the thread that sends cache invalidations to the kernel."""
        self._notify = queue.Queue()
        threading.Thread(target=self._notify_loop, name="vdisk-fuse-notify", daemon=True).start()

    def stop_notifier(self):
        if self._notify is not None:
            self._notify.put(None)

    def _notify_loop(self):
        while True:
            job = self._notify.get()
            if job is None:
                return
            kind, args = job
            try:
                if kind == "done":
                    args[0].set()
                elif kind == "inode":
                    pyfuse3.invalidate_inode(*args)
                else:
                    pyfuse3.invalidate_entry(*args)
            except FileNotFoundError:
                pass   # the kernel holds nothing for it: nothing to invalidate
            except OSError as e:
                log.warning("kernel cache invalidation %s%r failed: %s", kind, args, e)

    def _post(self, kind, *args):
        if self._notify is not None:
            self._notify.put((kind, args))

    def refresh(self, notify: bool = True):
        """Re-read the snapshot list and disk size after a change made over the
        control socket; tell the kernel to drop what it cached of the changes."""
        snaps = self.disk.snapshots(exclusive=False)
        with self._lock:
            old = self._snaps
            new: dict[str, Node] = {}
            for s in snaps:
                fname = s.name + SNAP_SUFFIX
                node = old.get(fname)
                if node is None or node.created != s.created:
                    node = Node(next(self._next_ino), fname, False, s.name, s.created)
                    self._nodes[node.ino] = node
                new[fname] = node
            gone = [n for f, n in old.items() if new.get(f) is not n]
            added = [n for f, n in new.items() if old.get(f) is not n]
            for n in gone:
                n.alive = False
                if not n.opens:
                    self._nodes.pop(n.ino, None)
            self._snaps = new
            op = self._changing
        if not notify or self._notify is None:
            return
        for n in gone:
            self._post("entry", SNAPDIR_INO, n.name.encode(), n.ino)
        for n in added:
            # The kernel may hold a negative entry from an earlier lookup.
            self._post("entry", SNAPDIR_INO, n.name.encode())
        if gone or added:
            self._post("inode", SNAPDIR_INO, True)
        # A revert changes the contents of disk.img (and maybe its size), a
        # resize its size; snapshot create and delete leave it as it is.
        if op in (None, "snapshot_revert"):
            self._recount()
            self._post("inode", DISK_INO, False)
        elif op == "resize":
            self._post("inode", DISK_INO, True)
        # The CLI command returns after this: by then the kernel must show the
        # change. Waiting is safe here (unlike on the trio thread), and is
        # bounded in case the kernel is slow to take a notification.
        done = threading.Event()
        self._post("done", done)
        if not done.wait(NOTIFY_WAIT):
            log.warning("the kernel took over %.0f s to drop cached entries; the listing may lag", NOTIFY_WAIT)

    def _recount(self):
        allocated = self.disk.allocated_bytes()
        with self._lock:
            self.image.allocated = allocated

    def guard(self, op: str, args: dict):
        """Refuse control operations that would pull data from under open files.

        The file the change touches is checked and marked under ``_lock``,
        which :meth:`open` takes too, and stays marked until the change and
        :meth:`refresh` are done: an open in between is refused rather than
        handed a file that is going away or changing under it.
        """
        with self._lock:
            node = None
            if op in ("snapshot_delete", "snapshot_rename"):
                # A renamed snapshot's file goes away as a deleted one's does
                # (NAME.img is the name), so open files refuse both alike.
                node = self._snaps.get(str(args.get("name")) + SNAP_SUFFIX)
                if node is not None and node.opens:
                    raise Busy(f"snapshot {args['name']!r} is open {node.opens} time(s) as "
                               f"{os.path.join(self.mountpoint, SNAP_DIR, node.name)}; close it first")
            elif op == "snapshot_revert":
                node = self.image
                if node.opens:
                    raise Busy(f"{os.path.join(self.mountpoint, DISK_NAME)} is open {node.opens} time(s); "
                               f"close it before reverting")
            self._changing = op
            if node is not None:
                node.changing = op
        return self._until_changed(node)

    @contextlib.contextmanager
    def _until_changed(self, node):
        try:
            yield
        finally:
            with self._lock:
                self._changing = None
                if node is not None:
                    node.changing = None
