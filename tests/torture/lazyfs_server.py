"""The FUSE process of the lazy file system (see lazyfs.py for the picture).

Run as ``python lazyfs_server.py BACKING MOUNTPOINT CONTROL_SOCKET SEED``.
It passes every request through to the directory BACKING, except that file
data written since the file's last fsync/fdatasync stays in this process's
memory, one 4 KiB page at a time, and new directory entries stay "not
durable" until their parent directory is fsynced. BACKING plays the stable
storage: what is in it survives a power cut, what is only here does not.

Control requests (one JSON object per line on CONTROL_SOCKET, one JSON reply
per line) cut the power, add fault rules, read statistics and sync
everything; lazyfs.py is the client. After a cut every request fails with
EIO: the process, like the machine, is dead, and the harness unmounts it and
starts a fresh one over BACKING (which also empties the kernel's page cache
of the mount, which would otherwise still serve dropped data).

Handlers run on the trio thread, control requests on their own threads; one
lock guards all state. Handlers never await, so requests are served one at
a time, in the order the kernel sent them.
"""

from __future__ import annotations

import errno
import fnmatch
import functools
import itertools
import json
import os
import random
import shutil
import socket
import stat
import sys
import threading
import traceback

import pyfuse3
import trio

PAGE = 4096
ZERO_PAGE = bytes(PAGE)
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
SEEK_DATA, SEEK_HOLE = 3, 4
TIMEOUT = 1.0
IOV_BATCH = 512        # pages per pwritev, below IOV_MAX (1024)
ACTIONS = {"eio": errno.EIO, "enospc": errno.ENOSPC, "short": None, "cut": errno.EIO}
OPS = ("write", "fsync", "read", "create", "fsyncdir")


class Rule:
    """A fault: on matching ``op`` on a path matching ``path`` (fnmatch, relative
    to the mount), after ``skip`` matches, fire every ``every``-th time, at
    most ``count`` times (0: no limit)."""

    def __init__(self, rid, op, path, action, skip=0, every=1, count=1, drop=True):
        if op not in OPS or action not in ACTIONS:
            raise ValueError(f"bad rule {op}/{action}")
        self.id, self.op, self.path, self.action = rid, op, path, action
        self.skip, self.every, self.count, self.drop = skip, max(1, every), count, drop
        self.seen = 0
        self.fired = 0

    def matches(self, op, path) -> bool:
        if op != self.op or not fnmatch.fnmatchcase(path, self.path):
            return False
        if self.count and self.fired >= self.count:
            return False
        self.seen += 1
        n = self.seen - self.skip
        if n <= 0 or n % self.every:
            return False
        self.fired += 1
        return True

    def as_dict(self):
        return {k: getattr(self, k) for k in ("id", "op", "path", "action", "skip", "every",
                                              "count", "seen", "fired")}


class File:
    """What this process knows of one regular file beyond BACKING."""

    __slots__ = ("fd", "size", "dirty")

    def __init__(self, fd):
        self.fd = fd
        self.size = os.fstat(fd).st_size
        self.dirty: dict[int, bytes | bytearray] = {}   # page -> whole page (zeros past size)


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


class LazyFS(pyfuse3.Operations):
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
        self.rules: list[Rule] = []
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

    # ------------------------------------------------------------ file data

    def _base(self, f: File, page: int) -> bytearray:
        data = os.pread(f.fd, PAGE, page * PAGE)
        return bytearray(data.ljust(PAGE, b"\0"))

    def _write(self, f: File, off: int, buf):
        mv = memoryview(buf)
        end = off + len(mv)
        pos = off
        while pos < end:
            i = pos // PAGE
            po = pos - i * PAGE
            n = min(PAGE - po, end - pos)
            page = f.dirty.get(i)
            if n == PAGE:
                f.dirty[i] = bytes(mv[pos - off:pos - off + n])
            else:
                if page is None:
                    page = self._base(f, i)
                elif type(page) is bytes:
                    page = bytearray(page)
                page[po:po + n] = mv[pos - off:pos - off + n]
                f.dirty[i] = page
            pos += n
        f.size = max(f.size, end)

    def _read(self, f: File, off: int, size: int) -> bytes:
        end = min(off + size, f.size)
        out = bytearray()
        pos = off
        while pos < end:
            i = pos // PAGE
            page = f.dirty.get(i)
            if page is not None:
                po = pos - i * PAGE
                n = min(PAGE - po, end - pos)
                out += page[po:po + n]
                pos += n
                continue
            j = i + 1
            while j * PAGE < end and j not in f.dirty:
                j += 1
            stop = min(j * PAGE, end)
            data = os.pread(f.fd, stop - pos, pos)
            out += data
            if len(data) < stop - pos:
                out += bytes(stop - pos - len(data))
            pos = stop
        return bytes(out)

    def _truncate(self, f: File, size: int):
        if size < f.size:
            for i in [i for i in f.dirty if i * PAGE >= size]:
                del f.dirty[i]
            i, po = divmod(size, PAGE)
            if po and i in f.dirty:
                page = bytearray(f.dirty[i])
                page[po:] = bytes(PAGE - po)
                f.dirty[i] = page
            # A shrink is made durable at once (a simplification: nothing the
            # engine or LMDB does depends on losing one).
            if os.fstat(f.fd).st_size > size:
                os.ftruncate(f.fd, size)
        f.size = size

    def _zero(self, f: File, off: int, length: int):
        end = min(off + length, f.size)
        pos = off
        while pos < end:
            i = pos // PAGE
            if pos == i * PAGE and end - pos >= PAGE:
                f.dirty[i] = ZERO_PAGE
                pos += PAGE
            else:
                n = min(PAGE - (pos - i * PAGE), end - pos)
                self._write(f, pos, bytes(n))
                pos += n

    def _write_back(self, f: File, pages):
        """Write the given dirty pages to BACKING, joined into runs."""
        run: list[int] = []

        def put():
            start = run[0] * PAGE
            stop = min((run[-1] + 1) * PAGE, f.size)
            if stop > start:
                bufs = [f.dirty[i] for i in run]
                total = sum(len(b) for b in bufs)
                if total > stop - start:
                    bufs[-1] = bufs[-1][:len(bufs[-1]) - (total - (stop - start))]
                os.pwritev(f.fd, bufs, start)
        for i in sorted(pages):
            if run and (i != run[-1] + 1 or len(run) >= IOV_BATCH):
                put()
                run = []
            run.append(i)
        if run:
            put()

    def _sync_file(self, f: File):
        self._write_back(f, list(f.dirty))
        f.dirty.clear()
        if os.fstat(f.fd).st_size < f.size:
            os.ftruncate(f.fd, f.size)

    # ------------------------------------------------------------ cut and sync

    def _cut(self, keep, lose, grow) -> dict:
        """Power cut: write back a random subset of the dirty pages, lose some
        new directory entries, forget the rest; from now on fail everything."""
        rng = self.rng
        keep = rng.choice((0.0, 0.25, 0.5, 0.75, 1.0)) if keep is None else keep
        lose = 0.5 if lose is None else lose
        grow = 0.25 if grow is None else grow
        kept = dropped = 0
        for ino in sorted(self.files):
            f = self.files[ino]
            pages = sorted(f.dirty)
            chosen = [i for i in pages if rng.random() < keep]
            self._write_back(f, chosen)
            kept += len(chosen)
            dropped += len(pages) - len(chosen)
            # The new size reached the disk without (all) its data: zeros.
            if pages and rng.random() < grow and os.fstat(f.fd).st_size < f.size:
                os.ftruncate(f.fd, f.size)
                self.stats["sizes_grown"] += 1
            f.dirty.clear()
        lost = []
        for parent in sorted(self.pending):
            node = self.nodes.get(parent)
            if node is None or node.path is None:
                continue
            for name, how in sorted(self.pending[parent].items()):
                if rng.random() >= lose:
                    continue
                rel = f"{node.path}/{name}" if node.path else name
                full = self._full(rel)
                if not os.path.lexists(full):
                    continue
                if how[0] == "new":
                    if os.path.isdir(full) and not os.path.islink(full):
                        shutil.rmtree(full, ignore_errors=True)
                    else:
                        os.unlink(full)
                    lost.append(rel)
                else:
                    old = self.nodes.get(how[1])
                    if old is None or old.path is None:
                        continue
                    old_rel = f"{old.path}/{how[2]}" if old.path else how[2]
                    if not os.path.lexists(self._full(old_rel)) and os.path.isdir(self._full(old.path)):
                        os.rename(full, self._full(old_rel))
                        lost.append(f"{rel} (renamed back to {old_rel})")
        self.pending.clear()
        self.dead = True
        self.stats["cuts"] += 1
        self.stats["pages_kept"] += kept
        self.stats["pages_dropped"] += dropped
        self.stats["entries_lost"] += len(lost)
        return {"keep": keep, "kept": kept, "dropped": dropped, "lost_entries": lost}

    def sync_all(self):
        """Everything durable: dirty pages and directory entries (an idle machine)."""
        if self.dead:
            raise OSError(errno.EIO, "the file system is dead (power cut)")
        for f in self.files.values():
            self._sync_file(f)
        self.pending.clear()

    def control(self, req: dict) -> dict:
        cmd = req.get("cmd")
        with self.lock:
            if cmd == "ping":
                return {"ok": True, "dead": self.dead}
            if cmd == "stats":
                return {"ok": True, "dead": self.dead, "rules": [r.as_dict() for r in self.rules],
                        "dirty_pages": sum(len(f.dirty) for f in self.files.values()),
                        "pending_entries": sum(len(p) for p in self.pending.values()),
                        "fired": self.fired_log[-50:], **self.stats}
            if cmd == "cut":
                if self.dead:
                    return {"ok": True, "already": True}
                return {"ok": True, **self._cut(req.get("keep"), req.get("lose"), req.get("grow"))}
            if cmd == "fault":
                args = {k: v for k, v in req.items() if k != "cmd"}
                rule = Rule(next(self._rule_ids), **args)
                self.rules.append(rule)
                return {"ok": True, "id": rule.id}
            if cmd == "clear":
                self.rules.clear()
                return {"ok": True}
            if cmd == "sync":
                self.sync_all()
                return {"ok": True}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

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
                    self._truncate(self._file(inode), attr.st_size)
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
                self._truncate(self.files[node.ino], 0)
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
                self._truncate(f, 0)
            return pyfuse3.FileInfo(fh=inode)

    @_guarded
    async def read(self, fh, off, size):
        with self.lock:
            rule = self._check("read", fh)
            if rule is not None:
                _fail(ACTIONS[rule.action] or errno.EIO)
            return self._read(self._file(fh), off, size)

    @_guarded
    async def write(self, fh, off, buf):
        with self.lock:
            rule = self._check("write", fh)
            if rule is not None:
                if rule.action != "short":
                    _fail(ACTIONS[rule.action])
                if len(buf) > 1:       # one byte cannot be cut short
                    buf = buf[:len(buf) // 2]
            self._write(self._file(fh), off, buf)
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
            self._sync_file(f)

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
                self._zero(f, offset, length)
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


def serve_control(fs: LazyFS, path: str):
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(8)

    def client(conn):
        with conn, conn.makefile("rwb") as stream:
            for line in stream:
                try:
                    reply = fs.control(json.loads(line))
                except Exception as e:        # a bad request must not end the server
                    reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                stream.write(json.dumps(reply).encode() + b"\n")
                stream.flush()

    def accept():
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=client, args=(conn,), daemon=True).start()
    threading.Thread(target=accept, daemon=True).start()


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
