"""The pyfuse3 file system: a disk's running point and snapshots as image files.

Layout::

    MOUNTPOINT/disk.img              running point, read-write, size = disk size
    MOUNTPOINT/snapshots/NAME.img    one per snapshot, read-only

Every handler is a thin call into :class:`vdisk.Disk` (or a snapshot view);
engine errors become their ``errno``. The choices a block-device-backed
image has to make, and why:

* The size is fixed (it is the disk's). A write starting at or past the end
  fails with EFBIG, one running over the end writes what fits and returns a
  short count: the POSIX rule for a file at its size limit, and what a block
  device does (short write, then an error) - the file system is not full, so
  ENOSPC would mislead. Reads past the end return end-of-file.
* truncate to another size, unlink, rename, mkdir, create, link, chmod,
  chown and utimes are refused: EPERM at the top level (the disk is resized
  with ``vdisk resize``), EROFS under ``snapshots/`` (snapshots never change;
  they are made and deleted with ``vdisk snapshot``). Truncating to the
  current size succeeds, as some tools do it to "make sure". Opening with
  O_TRUNC (``cp``, a shell's ``>``) is a truncation too, and refused.
* fsync and fdatasync flush the disk (everything acknowledged is durable);
  closing a file does not, as on any file system.
* ``fallocate(PUNCH_HOLE)`` trims, ``FALLOC_FL_ZERO_RANGE`` zeroes (both
  unmap whole blocks); plain preallocation is EOPNOTSUPP, since a thin disk
  cannot reserve space. SEEK_DATA/SEEK_HOLE report the disk's real holes.
  Both come from :mod:`vdisk.fusefs.lowlevel` (pyfuse3 lacks them).
* ``st_blocks`` is the image's allocated bytes / 512, so ``du``, ``ls -s``
  and ``cp --sparse`` see the real space. Counting it costs a walk of the
  whole extent map (40 ms at 100,000 extents), and the kernel asks after
  every write, so disk.img keeps a running count instead: each write or
  trim adds the change in its own block range (one block-status lookup),
  and a revert recounts. Snapshot files count once.
* The files carry the mode and owner of ``DISK/data``; snapshot files show
  the same mode but fail writes with EROFS, like files of a read-only mount.

Snapshots change only through the control socket (the mount holds the writer
lock), which calls :meth:`VdiskFS.refresh` after each change (see
:mod:`.live`). Each snapshot
generation gets its own inode number, never reused: a snapshot deleted and
re-created under the same name is a new file, so no cache (kernel or ours)
can mix up the two. A file still open on a deleted snapshot fails with
ESTALE.

Threads: handlers run on the trio thread and call the engine directly.
Measured with bench/fuse_bench.py against a variant that moved each engine
call to a worker thread (``trio.to_thread.run_sync``; docs/FUSE.md): that
only adds hand-off cost (4 KiB reads at about half the rate), because the
engine runs under the GIL and one lock serialises it anyway; the loop still
stays responsive, since a snapshot deletion takes the disk lock for at most
20 ms per batch. Kernel notifications are sent from their own thread
(:mod:`.live`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import logging
import os
import stat
import threading
import time

import pyfuse3

from vdisk.errors import NotFound, VdiskError

from .live import LiveChanges
from .nodes import (ATTR_TIMEOUT, DISK_INO, DISK_NAME, ENTRY_TIMEOUT, FIRST_SNAP_INO, ROOT_INO,  # noqa: F401
                    SNAP_DIR, SNAP_SUFFIX, SNAPDIR_INO, Handle, Node)

log = logging.getLogger("vdisk.fusefs")

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
SEEK_DATA = 3
SEEK_HOLE = 4
# SEEK_DATA/SEEK_HOLE ask the engine for block status one window at a time,
# so a seek near data does not walk the extents of the whole disk.
SEEK_WINDOW = 64 << 20
SEEK_WINDOW_MAX = 4 << 30


@contextlib.contextmanager
def _errors(what: str):
    """The same errno mapping for the synchronous handlers of lowlevel.py."""
    try:
        yield
    except pyfuse3.FUSEError:
        raise
    except NotFound as e:
        log.info("%s: %s", what, e)
        raise pyfuse3.FUSEError(errno.ESTALE) from None
    except VdiskError as e:
        log.warning("%s failed: %s", what, e)
        raise pyfuse3.FUSEError(e.errno) from None
    except Exception:
        log.exception("%s failed", what)
        raise pyfuse3.FUSEError(errno.EIO) from None


def _handler(fn):
    """Every request answers with an errno: pyfuse3 ends the whole mount if
    a handler raises anything but FUSEError."""
    @functools.wraps(fn)
    async def run(self, *args):
        with _errors(fn.__name__):
            return await fn(self, *args)
    return run


def _fail(code: int, why: str | None = None):
    if why:
        log.info("%s (%s)", why, errno.errorcode.get(code, code))
    raise pyfuse3.FUSEError(code)


class VdiskFS(LiveChanges, pyfuse3.Operations):
    """The file system of one open, writable :class:`vdisk.Disk`."""

    supports_dot_lookup = False
    enable_writeback_cache = False   # write-through: a write returns once the engine has it
    enable_acl = False

    def __init__(self, disk, mountpoint: str):
        super().__init__()
        self.disk = disk
        self.mountpoint = mountpoint
        # The image files take the data file's owner and mode; a rados disk
        # has none here: its local state directory's (owner-only) then.
        data = os.path.join(disk.path, "data")
        st = os.stat(data if disk.where.get("kind") != "rados" else disk.path)
        self.uid, self.gid = st.st_uid, st.st_gid
        self.file_mode = stat.S_IMODE(st.st_mode) & 0o666
        self.mounted_ns = time.time_ns()
        self.disk_mtime_ns = st.st_mtime_ns
        self._lock = threading.Lock()       # nodes, handles, open counts (trio + control threads)
        self._next_ino = itertools.count(FIRST_SNAP_INO)
        self._next_fh = itertools.count(1)
        self._handles: dict[int, Handle] = {}
        self.root = Node(ROOT_INO, "", True)
        self.snapdir = Node(SNAPDIR_INO, SNAP_DIR, True)
        self.image = Node(DISK_INO, DISK_NAME, False)
        self.image.view = disk
        self._nodes: dict[int, Node] = {n.ino: n for n in (self.root, self.snapdir, self.image)}
        self._snaps: dict[str, Node] = {}   # file name (NAME.img) -> live node, oldest first
        self._notify = None                   # the notifier thread's queue (see live.py)
        self._changing: str | None = None     # the control op under way (guard() until it is done)
        self.refresh(notify=False)
        self._recount()

    def _allocated_in(self, start: int, end: int) -> int:
        """Allocated bytes of disk.img in the whole blocks covering [start, end)."""
        bs = self.disk.block_size
        a, b = start // bs * bs, min(-(-end // bs) * bs, self.disk.size)
        return sum(e.length for e in self.disk.block_status(a, b - a) if e.allocated)

    def _count(self, delta: int):
        with self._lock:
            self.image.allocated += delta
        self.disk_mtime_ns = time.time_ns()

    # ------------------------------------------------------------ attributes

    def _node(self, ino) -> Node:
        node = self._nodes.get(ino)
        if node is None:
            _fail(errno.ESTALE)
        return node

    def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.generation = 0
        a.entry_timeout = ENTRY_TIMEOUT
        a.attr_timeout = ATTR_TIMEOUT
        a.st_uid = self.uid
        a.st_gid = self.gid
        a.st_blksize = self.disk.block_size
        if node.is_dir:
            a.st_mode = stat.S_IFDIR | 0o755
            a.st_nlink = 3 if node is self.root else 2
            a.st_size = 0
            a.st_blocks = 0
            t = self.mounted_ns
        else:
            a.st_mode = stat.S_IFREG | self.file_mode
            a.st_nlink = 1
            with self._pinned(node) as dev:
                a.st_size = dev.size
                if node.allocated is None:
                    node.allocated = dev.allocated_bytes()
                a.st_blocks = node.allocated // 512
            t = self.disk_mtime_ns if node is self.image else int(node.created * 1e9)
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = t
        return a

    def _view(self, node: Node):
        """The engine object behind a file (opened lazily for snapshots)."""
        if node.view is None:
            node.view = self.disk.open_snapshot(node.snapshot)
        return node.view

    @_handler
    async def getattr(self, inode, ctx=None):
        return self._attrs(self._node(inode))

    @_handler
    async def lookup(self, parent_inode, name, ctx=None):
        name = os.fsdecode(name)
        node = None
        if parent_inode == ROOT_INO:
            node = {DISK_NAME: self.image, SNAP_DIR: self.snapdir}.get(name)
        elif parent_inode == SNAPDIR_INO:
            with self._lock:
                node = self._snaps.get(name)
        if node is None:
            _fail(errno.ENOENT)
        return self._attrs(node)

    @_handler
    async def setattr(self, inode, attr, fields, fh, ctx):
        node = self._node(inode)
        code = errno.EROFS if node.snapshot is not None else errno.EPERM
        changes = [f for f in ("update_atime", "update_mtime", "update_ctime", "update_mode",
                               "update_uid", "update_gid") if getattr(fields, f)]
        if fields.update_size and not node.is_dir and not changes:
            with self._pinned(node) as dev:
                same = attr.st_size == dev.size
            if same:
                return self._attrs(node)
        what = "resize it with vdisk resize" if fields.update_size else "image attributes are fixed"
        _fail(code, f"setattr on {node.name or '/'} refused: {what}")

    @_handler
    async def statfs(self, ctx):
        host = os.statvfs(self.disk.path)
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = host.f_frsize
        s.f_blocks = host.f_blocks
        s.f_bfree = host.f_bfree
        s.f_bavail = host.f_bavail
        with self._lock:
            s.f_files = 3 + len(self._snaps)
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    # ------------------------------------------------------------ directories

    @_handler
    async def opendir(self, inode, ctx):
        node = self._node(inode)
        if not node.is_dir:
            _fail(errno.ENOTDIR)
        return inode

    @_handler
    async def readdir(self, fh, start_id, token):
        if fh == ROOT_INO:
            entries = [self.image, self.snapdir]
        else:
            with self._lock:
                entries = list(self._snaps.values())
        # Entry i is returned with "next id" i + 1; start_id is where to go on.
        for i in range(start_id, len(entries)):
            node = entries[i]
            try:
                attrs = self._attrs(node)
            except pyfuse3.FUSEError:
                continue   # deleted while listing
            if not pyfuse3.readdir_reply(token, node.name.encode(), attrs, i + 1):
                return

    @_handler
    async def releasedir(self, fh):
        pass

    # ------------------------------------------------------------ refused changes

    def _refuse_in(self, parent_inode, name, what):
        code = errno.EROFS if parent_inode == SNAPDIR_INO else errno.EPERM
        _fail(code, f"{what} {os.fsdecode(name)!r} refused: the file layout is fixed")

    @_handler
    async def mkdir(self, parent_inode, name, mode, ctx):
        self._refuse_in(parent_inode, name, "mkdir")

    @_handler
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        self._refuse_in(parent_inode, name, "mknod")

    @_handler
    async def create(self, parent_inode, name, mode, flags, ctx):
        self._refuse_in(parent_inode, name, "create")

    @_handler
    async def symlink(self, parent_inode, name, target, ctx):
        self._refuse_in(parent_inode, name, "symlink")

    @_handler
    async def link(self, inode, new_parent_inode, new_name, ctx):
        self._refuse_in(new_parent_inode, new_name, "link")

    @_handler
    async def unlink(self, parent_inode, name, ctx):
        self._refuse_in(parent_inode, name, "unlink")

    @_handler
    async def rmdir(self, parent_inode, name, ctx):
        self._refuse_in(parent_inode, name, "rmdir")

    @_handler
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        self._refuse_in(parent_inode_old, name_old, "rename")

    @_handler
    async def setxattr(self, inode, name, value, ctx):
        self._refuse_in(SNAPDIR_INO if self._node(inode).snapshot else ROOT_INO, name, "setxattr")

    # ------------------------------------------------------------ files

    @_handler
    async def open(self, inode, flags, ctx):
        node = self._node(inode)
        if node.is_dir:
            _fail(errno.EISDIR)
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        with self._lock:
            if not node.alive or node.changing in ("snapshot_delete", "snapshot_rename"):
                _fail(errno.ENOENT)
            if node.changing is not None:
                _fail(errno.EBUSY, f"open of {node.name} refused: a {node.changing} is under way")
            if writable and node.snapshot is not None:
                _fail(errno.EROFS, f"{SNAP_DIR}/{node.name} opened for writing: snapshots are read-only")
            if flags & os.O_TRUNC:
                # libfuse asks the kernel for atomic O_TRUNC, so truncation on
                # open arrives here, not in setattr. Ignoring it (as a block
                # device does) would leave the old bytes after what cp or a
                # shell redirection writes.
                _fail(errno.EROFS if node.snapshot is not None else errno.EPERM,
                      f"open of {node.name} with O_TRUNC refused: the image has a fixed size "
                      f"(write in place: dd conv=notrunc, qemu-img convert -n)")
            node.opens += 1
            fh = next(self._next_fh)
            self._handles[fh] = Handle(node, writable)
        # A snapshot never changes, so its cached pages stay valid across
        # opens; disk.img starts each open with a fresh cache.
        return pyfuse3.FileInfo(fh=fh, keep_cache=node.snapshot is not None)

    @_handler
    async def release(self, fh):
        with self._lock:
            h = self._handles.pop(fh, None)
            if h is None:
                return
            node = h.node
            node.opens -= 1
            if not node.alive and not node.opens:
                self._nodes.pop(node.ino, None)

    def _handle(self, fh) -> Handle:
        h = self._handles.get(fh)
        if h is None:
            _fail(errno.EBADF)
        return h

    @_handler
    async def read(self, fh, off, size):
        node = self._handle(fh).node
        with self._pinned(node) as dev:
            end = min(off + size, dev.size)
            if off >= end:
                return b""
            return dev.read(off, end - off)

    @_handler
    async def write(self, fh, off, buf):
        node = self._handle(fh).node
        if node.snapshot is not None:
            _fail(errno.EROFS)
        size = self.disk.size
        if off >= size:
            _fail(errno.EFBIG, f"write at {off} refused: {DISK_NAME} ends at {size}")
        n = min(len(buf), size - off)
        if not n:
            return 0
        before = self._allocated_in(off, off + n)
        self.disk.write(off, buf if n == len(buf) else memoryview(buf)[:n])
        # A write maps every block it touches (edges are merged, never left out).
        bs = self.disk.block_size
        self._count((-(-(off + n) // bs) - off // bs) * bs - before)
        return n

    @_handler
    async def flush(self, fh):
        pass   # close() is not a durability point on any file system

    @_handler
    async def fsync(self, fh, datasync):
        if self._handle(fh).node.snapshot is None:
            self.disk.flush()

    @contextlib.contextmanager
    def _pinned(self, node: Node):
        """The engine object of a file, kept from being deleted while in use.

        Control operations run one at a time and each ends with
        :meth:`refresh`, which marks a deleted snapshot's node dead under
        ``_lock``; holding ``_lock`` from the check to the end of the read
        makes a file on a deleted snapshot fail with ESTALE at once, the same
        way for every handler (the engine's view would also refuse to read
        it, with NotFound).
        """
        if node.snapshot is None:
            yield self.disk
            return
        with self._lock:
            if not node.alive:
                _fail(errno.ESTALE)
            yield self._view(node)

    # ------------------------------------------------------------ fallocate, lseek (see lowlevel.py)

    def fallocate(self, ino, mode, off, length):
        """FUSE_FALLOCATE: punch hole = trim, zero range = zero (called by lowlevel)."""
        with _errors("fallocate"):
            node = self._node(ino)
            if node.snapshot is not None:
                _fail(errno.EROFS)
            if node is not self.image:
                _fail(errno.EISDIR)
            if mode & FALLOC_FL_PUNCH_HOLE:
                op = self.disk.trim
            elif mode & FALLOC_FL_ZERO_RANGE:
                op = self.disk.zero
            else:
                _fail(errno.EOPNOTSUPP, "preallocation refused: a thin disk cannot reserve space")
            size = self.disk.size
            if off < 0 or length <= 0:
                _fail(errno.EINVAL)
            if off + length > size and not mode & FALLOC_FL_KEEP_SIZE:
                _fail(errno.EFBIG, f"fallocate past the end of {DISK_NAME} refused")
            end = min(off + length, size)
            if off < end:
                before = self._allocated_in(off, end)
                op(off, end - off)
                self._count(self._allocated_in(off, end) - before)

    def lseek(self, ino, off, whence):
        """FUSE_LSEEK (SEEK_DATA/SEEK_HOLE only; the kernel does the rest)."""
        with _errors("lseek"):
            node = self._node(ino)
            if whence not in (SEEK_DATA, SEEK_HOLE):
                _fail(errno.EINVAL)
            with self._pinned(node) as dev:
                size = dev.size
                if off < 0 or off >= size:
                    _fail(errno.ENXIO)
                window = SEEK_WINDOW
                pos = off
                while pos < size:
                    n = min(window, size - pos)
                    for e in dev.block_status(pos, n):
                        if e.allocated == (whence == SEEK_DATA):
                            return max(e.offset, off)
                    pos += n
                    window = min(window * 2, SEEK_WINDOW_MAX)
            if whence == SEEK_DATA:
                _fail(errno.ENXIO)
            return size   # the implicit hole at the end of the file
