"""The FUSE process of the lazy file system (see lazyfs.py for the picture).

(Just over 500 lines: one FUSE handler per request kind, each short; the
page model and the fault rules are in lazyfs_pages.py.)

Run as ``python lazyfs_server.py BACKING MOUNTPOINT CONTROL_SOCKET SEED``.
It passes every request through to the directory BACKING, except that file
data written since the file's last fsync/fdatasync stays in this process's
memory, one 4 KiB page at a time, and new directory entries stay "not
durable" until their parent directory is fsynced. BACKING plays the stable
storage: what is in it survives a power cut, what is only here does not.

Control requests (lazyfs_control.py: one JSON object per line on
CONTROL_SOCKET) cut the power, add fault rules, read statistics and sync
everything; lazyfs.py is the client. File data lives in lazyfs_pages.py. After a cut every request fails with
EIO: the process, like the machine, is dead, and the harness unmounts it and
starts a fresh one over BACKING (which also empties the kernel's page cache
of the mount, which would otherwise still serve dropped data).

Handlers run on the trio thread, control requests on their own threads; one
lock guards all state. Handlers never await, so requests are served one at
a time, in the order the kernel sent them.
"""

from __future__ import annotations

import errno
import functools
import itertools
import os
import random
import stat
import sys
import threading
import traceback

import pyfuse3
import trio

from lazyfs_control import Power, serve_control
from lazyfs_pages import ACTIONS, OPS, File

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
SEEK_DATA, SEEK_HOLE = 3, 4
TIMEOUT = 1.0


class Node:
    __slots__ = ("ino", "path")

    def __init__(self, ino, path):
        self.ino, self.path = ino, path      # path relative to BACKING; None once unlinked


def _fail(code):
    raise pyfuse3.FUSEError(code)


def _guarded(fn):
    """pyfuse3 ends the whole mount when a handler raises anything but
    FUSEError: answer EIO instead, and say why on stderr."""
    @functools.wraps(fn)
    async def run(*args):
        try:
            return await fn(*args)
        except pyfuse3.FUSEError:
            raise
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except Exception:
            traceback.print_exc()
            raise pyfuse3.FUSEError(errno.EIO) from None
    return run


class LazyFS(Power, pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False     # write-through: every write() reaches us before it returns
    enable_acl = False

    def __init__(self, backing: str, seed: int):
        super().__init__()
        self.backing = backing
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.dead = False
        self._inos = itertools.count(pyfuse3.ROOT_INODE + 1)
        self.nodes = {pyfuse3.ROOT_INODE: Node(pyfuse3.ROOT_INODE, "")}
        self.ino_of = {"": pyfuse3.ROOT_INODE}
        self.files: dict[int, File] = {}
        # parent ino -> {name: ("new",) | ("renamed", old parent ino, old name)}
        self.pending: dict[int, dict[str, tuple]] = {}
        self.rules: list = []              # lazyfs_pages.Rule, added by control requests
        self._rule_ids = itertools.count(1)
        # Requests by kind (OPS), then what faults and cuts did.
        self.stats = {k: 0 for k in (*OPS, "write_bytes", "faults", "cuts", "pages_kept", "pages_dropped",
                                     "pages_dropped_by_eio", "entries_lost", "sizes_grown")}
        self.fired_log: list[dict] = []

    # ------------------------------------------------------------ helpers

    def _full(self, rel: str) -> str:
        return os.path.join(self.backing, rel) if rel else self.backing

    def _node(self, ino) -> Node:
        node = self.nodes.get(ino)
        if node is None:
            _fail(errno.ESTALE)
        return node

    def _path(self, ino) -> str:
        node = self._node(ino)
        if node.path is None:
            _fail(errno.ENOENT)
        return node.path

    def _child(self, parent, name: bytes) -> str:
        base = self._path(parent)
        name = os.fsdecode(name)
        return f"{base}/{name}" if base else name

    def _node_for(self, rel) -> Node:
        ino = self.ino_of.get(rel)
        if ino is None:
            ino = next(self._inos)
            self.nodes[ino] = Node(ino, rel)
            self.ino_of[rel] = ino
        return self.nodes[ino]

    def _check(self, op: str, ino: int | None = None, rel: str | None = None):
        """Dead after a cut; otherwise the first fault rule that fires, if any."""
        if self.dead:
            _fail(errno.EIO)
        self.stats[op] += 1
        if not self.rules:
            return None
        if rel is None:
            node = self.nodes.get(ino)
            rel = node.path if node is not None and node.path is not None else ""
        for rule in self.rules:
            if rule.matches(op, rel):
                self.stats["faults"] += 1
                self.fired_log.append({"rule": rule.id, "op": op, "path": rel, "action": rule.action})
                if rule.action == "cut":
                    self._cut(keep=None, lose=None, grow=None)
                    _fail(errno.EIO)
                return rule
        return None

    def _file(self, ino) -> File:
        f = self.files.get(ino)
        if f is None:
            rel = self._path(ino)
            try:
                fd = os.open(self._full(rel), os.O_RDWR | os.O_NOFOLLOW)
            except OSError as e:
                _fail(e.errno)
            f = self.files[ino] = File(fd)
        return f

    def _attrs(self, node: Node, st=None) -> pyfuse3.EntryAttributes:
        if st is None:
            f = self.files.get(node.ino)
            try:
                st = os.fstat(f.fd) if f is not None else os.lstat(self._full(node.path))
            except (OSError, TypeError):
                _fail(errno.ENOENT)
        a = pyfuse3.EntryAttributes()
        for name in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size",
                     "st_blksize", "st_blocks", "st_atime_ns", "st_mtime_ns", "st_ctime_ns"):
            setattr(a, name, getattr(st, name))
        f = self.files.get(node.ino)
        if f is not None and stat.S_ISREG(st.st_mode):
            a.st_size = f.size
        a.st_ino = node.ino
        a.generation = 0
        a.entry_timeout = TIMEOUT
        a.attr_timeout = TIMEOUT
        return a

    def _new_entry(self, parent, rel):
        self.pending.setdefault(parent, {})[os.path.basename(rel)] = ("new",)

    # ------------------------------------------------------------ FUSE handlers

    @_guarded
    async def lookup(self, parent_inode, name, ctx):
        with self.lock:
            if self.dead:
                _fail(errno.EIO)
            rel = self._child(parent_inode, name)
            try:
                st = os.lstat(self._full(rel))
            except OSError as e:
                _fail(e.errno)
            return self._attrs(self._node_for(rel), st)

    @_guarded
    async def getattr(self, inode, ctx):
        with self.lock:
            if self.dead:
                _fail(errno.EIO)
            return self._attrs(self._node(inode))

    @_guarded
    async def setattr(self, inode, attr, fields, fh, ctx):
        with self.lock:
            if self.dead:
                _fail(errno.EIO)
            node = self._node(inode)
            try:
                if fields.update_size:
                    self._file(inode).truncate(attr.st_size)
                full = self._full(node.path) if node.path is not None else None
                if full is not None:
                    if fields.update_mode:
                        os.chmod(full, stat.S_IMODE(attr.st_mode))
                    if fields.update_uid or fields.update_gid:
                        os.chown(full, attr.st_uid if fields.update_uid else -1,
                                 attr.st_gid if fields.update_gid else -1, follow_symlinks=False)
                    if fields.update_atime or fields.update_mtime:
                        st = os.lstat(full)
                        os.utime(full, ns=(attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                                           attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns),
                                 follow_symlinks=False)
            except OSError as e:
                _fail(e.errno)
            return self._attrs(node)

    @_guarded
    async def readlink(self, inode, ctx):
        with self.lock:
            try:
                return os.fsencode(os.readlink(self._full(self._path(inode))))
            except OSError as e:
                _fail(e.errno)

    def _make(self, parent, name, make):
        with self.lock:
            rel = self._child(parent, name)
            rule = self._check("create", rel=rel)
            if rule is not None:
                _fail(ACTIONS[rule.action] or errno.EIO)
            try:
                make(self._full(rel))
            except OSError as e:
                _fail(e.errno)
            self._new_entry(parent, rel)
            return self._attrs(self._node_for(rel))

    @_guarded
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return self._make(parent_inode, name, lambda p: os.mknod(p, mode, rdev))

    @_guarded
    async def mkdir(self, parent_inode, name, mode, ctx):
        return self._make(parent_inode, name, lambda p: os.mkdir(p, stat.S_IMODE(mode)))

    @_guarded
    async def symlink(self, parent_inode, name, target, ctx):
        return self._make(parent_inode, name, lambda p: os.symlink(os.fsdecode(target), p))

    @_guarded
    async def link(self, inode, new_parent_inode, new_name, ctx):
        _fail(errno.EPERM)

    @_guarded
    async def create(self, parent_inode, name, mode, flags, ctx):
        with self.lock:
            rel = self._child(parent_inode, name)
            rule = self._check("create", rel=rel)
            if rule is not None:
                _fail(ACTIONS[rule.action] or errno.EIO)
            try:
                fd = os.open(self._full(rel), os.O_CREAT | os.O_RDWR | (flags & os.O_EXCL),
                             stat.S_IMODE(mode))
            except OSError as e:
                _fail(e.errno)
            node = self._node_for(rel)
            old = self.files.pop(node.ino, None)
            if old is not None:
                os.close(old.fd)
            self.files[node.ino] = File(fd)
            if flags & os.O_TRUNC:
                self.files[node.ino].truncate(0)
            self._new_entry(parent_inode, rel)
            return pyfuse3.FileInfo(fh=node.ino), self._attrs(node)

    def _forget_path(self, parent, name, rel):
        self.pending.get(parent, {}).pop(os.path.basename(rel), None)
        ino = self.ino_of.pop(rel, None)
        if ino is not None:
            self.nodes[ino].path = None
        prefix = rel + "/"
        for p in [p for p in self.ino_of if p.startswith(prefix)]:
            self.nodes[self.ino_of.pop(p)].path = None

    @_guarded
    async def unlink(self, parent_inode, name, ctx):
        with self.lock:
            if self.dead:
                _fail(errno.EIO)
            rel = self._child(parent_inode, name)
            try:
                os.unlink(self._full(rel))      # durable at once (a simplification)
            except OSError as e:
                _fail(e.errno)
            self._forget_path(parent_inode, name, rel)

    @_guarded
    async def rmdir(self, parent_inode, name, ctx):
        with self.lock:
            if self.dead:
                _fail(errno.EIO)
            rel = self._child(parent_inode, name)
            try:
                os.rmdir(self._full(rel))
            except OSError as e:
                _fail(e.errno)
            self._forget_path(parent_inode, name, rel)

    @_guarded
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        with self.lock:
            if self.dead:
                _fail(errno.EIO)
            old = self._child(parent_inode_old, name_old)
            new = self._child(parent_inode_new, name_new)
            if flags & pyfuse3.RENAME_EXCHANGE:
                _fail(errno.EINVAL)
            if flags & pyfuse3.RENAME_NOREPLACE and os.path.lexists(self._full(new)):
                _fail(errno.EEXIST)
            try:
                os.rename(self._full(old), self._full(new))
            except OSError as e:
                _fail(e.errno)
            was = self.pending.get(parent_inode_old, {}).pop(os.path.basename(old), None)
            self._forget_path(parent_inode_new, name_new, new)
            moved = {p: i for p, i in self.ino_of.items() if p == old or p.startswith(old + "/")}
            for p, i in moved.items():
                del self.ino_of[p]
                self.nodes[i].path = new + p[len(old):]
                self.ino_of[self.nodes[i].path] = i
            how = ("new",) if was == ("new",) else ("renamed", parent_inode_old, os.path.basename(old))
            self.pending.setdefault(parent_inode_new, {})[os.path.basename(new)] = how

    @_guarded
    async def open(self, inode, flags, ctx):
        with self.lock:
            if self.dead:
                _fail(errno.EIO)
            f = self._file(inode)
            if flags & os.O_TRUNC:
                f.truncate(0)
            return pyfuse3.FileInfo(fh=inode)

    @_guarded
    async def read(self, fh, off, size):
        with self.lock:
            rule = self._check("read", fh)
            if rule is not None:
                _fail(ACTIONS[rule.action] or errno.EIO)
            return self._file(fh).read(off, size)

    @_guarded
    async def write(self, fh, off, buf):
        with self.lock:
            rule = self._check("write", fh)
            if rule is not None:
                if rule.action != "short":
                    _fail(ACTIONS[rule.action])
                if len(buf) > 1:       # one byte cannot be cut short
                    buf = buf[:len(buf) // 2]
            self._file(fh).write(off, buf)
            self.stats["write_bytes"] += len(buf)
            return len(buf)

    @_guarded
    async def fsync(self, fh, datasync):
        with self.lock:
            rule = self._check("fsync", fh)
            f = self._file(fh)
            if rule is not None:
                # Linux marks pages whose write-back failed clean: they are
                # gone, and the next fsync has nothing to report.
                if rule.drop:
                    self.stats["pages_dropped_by_eio"] += len(f.dirty)
                    f.dirty.clear()
                _fail(ACTIONS[rule.action] or errno.EIO)
            f.sync()

    @_guarded
    async def flush(self, fh):
        pass

    @_guarded
    async def release(self, fh):
        pass

    @_guarded
    async def opendir(self, inode, ctx):
        with self.lock:
            if self.dead:
                _fail(errno.EIO)
            self._path(inode)
            return inode

    @_guarded
    async def readdir(self, fh, start_id, token):
        with self.lock:
            if self.dead:
                _fail(errno.EIO)
            base = self._path(fh)
            try:
                names = sorted(os.listdir(self._full(base)))
            except OSError as e:
                _fail(e.errno)
            for i in range(start_id, len(names)):
                rel = f"{base}/{names[i]}" if base else names[i]
                try:
                    st = os.lstat(self._full(rel))
                except FileNotFoundError:
                    continue
                if not pyfuse3.readdir_reply(token, os.fsencode(names[i]),
                                             self._attrs(self._node_for(rel), st), i + 1):
                    break

    @_guarded
    async def releasedir(self, fh):
        pass

    @_guarded
    async def fsyncdir(self, fh, datasync):
        with self.lock:
            rule = self._check("fsyncdir", fh)
            if rule is not None:
                _fail(ACTIONS[rule.action] or errno.EIO)
            self.pending.pop(fh, None)

    @_guarded
    async def statfs(self, ctx):
        st = os.statvfs(self.backing)
        out = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                     "f_ffree", "f_favail", "f_namemax"):
            setattr(out, name, getattr(st, name))
        return out

    @_guarded
    async def access(self, inode, mode, ctx):
        return True

    @_guarded
    async def forget(self, inode_list):
        pass          # inode numbers stay valid for the life of the process

    # ------------------------------------------------------------ lowlevel.py hooks

    def fallocate(self, ino, mode, offset, length):
        with self.lock:
            if self.dead:
                raise OSError(errno.EIO, "dead")
            f = self._file(ino)
            if mode & FALLOC_FL_PUNCH_HOLE or mode & FALLOC_FL_ZERO_RANGE:
                if mode & FALLOC_FL_PUNCH_HOLE and not mode & FALLOC_FL_KEEP_SIZE:
                    raise OSError(errno.EOPNOTSUPP, "punch needs keep-size")
                f.zero(offset, length)
                if not mode & FALLOC_FL_KEEP_SIZE and offset + length > f.size:
                    f.size = offset + length
            elif mode & ~FALLOC_FL_KEEP_SIZE:
                raise OSError(errno.EOPNOTSUPP, "unsupported fallocate mode")
            elif not mode & FALLOC_FL_KEEP_SIZE and offset + length > f.size:
                f.size = offset + length

    def lseek(self, ino, offset, whence):
        with self.lock:
            if self.dead:
                raise OSError(errno.EIO, "dead")
            f = self._file(ino)
            if whence not in (SEEK_DATA, SEEK_HOLE):
                raise OSError(errno.EINVAL, "bad whence")
            if offset >= f.size:
                raise OSError(errno.ENXIO, "past the end")
            # Everything is data: a correct if lazy answer.
            return offset if whence == SEEK_DATA else f.size


async def _main():
    async with trio.open_nursery() as nursery:
        async def stop_on_term():
            import signal
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    pyfuse3.terminate()
                    return
        nursery.start_soon(stop_on_term)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def main(backing, mountpoint, control, seed):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    from vdisk.fusefs import lowlevel
    fs = LazyFS(os.path.abspath(backing), seed)
    pyfuse3.init(fs, mountpoint, {"fsname=lazyfs", "subtype=lazyfs", "default_permissions"})
    why = lowlevel.install(fs.fallocate, fs.lseek)
    if why:
        print(f"lazyfs: no fallocate/lseek ({why})", file=sys.stderr, flush=True)
    serve_control(fs, control)
    try:
        trio.run(_main)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
