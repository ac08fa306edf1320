"""Building a new disk container, so that a crash leaves no half-built disk.

The container is built under a hidden name beside its final one, every file
and directory synced, then renamed into place without replacing anything:
after a crash or a power cut there is either no disk or a whole one, and a
later create removes the leftovers of builds whose process is gone.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import time

from vdisk.btree import Forest, Layout, LmdbNodeStore
from vdisk.errors import AlreadyExists, NoSpace, NotADisk, NotFound, StorageError

from . import format as fmt
from .names import CSUM_BYTES, CSUM_TREE, FREE_TREE, RUNNING_TREE, VBA_TREE

# The process's own symbols, libc's among them (find_library runs ldconfig: ~8 ms of every command).
_libc = ctypes.CDLL(None, use_errno=True)
# Larger than LMDB's reader table for its default 126 readers (about 8 KiB).
LMDB_LOCK_FILE_RESERVE = 64 << 10


def require_container(path: str) -> None:
    """Refuse, without touching it, what is not a disk container.

    Checked before anything is created in it (the lock file), and by front
    ends whose disk another process opens, so the refusal comes first. One
    with a data file but no meta/ is a damaged disk, which opening names.
    """
    if not os.path.isdir(path):
        if os.path.exists(path):
            raise NotADisk(path)
        raise NotFound(f"no disk at {path}")
    if not os.path.isdir(os.path.join(path, "meta")) and not os.path.exists(os.path.join(path, "data")):
        raise NotADisk(path)


def create_container(path: str, size: int, block_size: int) -> None:
    """Build a new, empty disk at ``path``; on failure nothing is left behind.

    ``size`` and ``block_size`` are checked by the caller.
    """
    if os.path.exists(path):
        raise AlreadyExists(f"{path} already exists")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise NotFound(f"directory {parent} does not exist")
    # Built under a hidden name and renamed into place, so that a crash
    # or a power cut leaves either no disk or a whole one, never a
    # half-built container that open refuses.
    base = os.path.basename(os.path.abspath(path))
    _remove_stale_builds(parent, base)
    tmp = os.path.join(parent, f".{base}.creating-{os.getpid()}")
    try:
        _build_container(tmp, size, block_size)
        _rename_noreplace(tmp, path)
        fsync_dir(parent)
    except OSError as e:
        _remove_tree(tmp)
        if e.errno == errno.EEXIST or e.errno == errno.ENOTEMPTY:
            raise AlreadyExists(f"{path} already exists") from None
        if e.errno == errno.ENOSPC:
            raise NoSpace(f"no space to create {path}") from None
        raise StorageError(f"cannot create {path}: {e.strerror or e}") from None
    except BaseException:
        _remove_tree(tmp)
        raise


def _build_container(path: str, size: int, block_size: int):
    os.mkdir(path, 0o700)
    # Owner-only whatever the umask: a disk holds a guest's data.
    os.chmod(path, 0o700)
    meta = os.path.join(path, "meta")
    os.mkdir(meta, 0o700)
    os.chmod(meta, 0o700)
    for name in ("data", "lock", "meta/data.mdb"):
        _create_private(os.path.join(path, name))
    _reserve(os.path.join(meta, "lock.mdb"), LMDB_LOCK_FILE_RESERVE)
    store = LmdbNodeStore(meta)
    try:
        write_empty_disk(store, size, block_size)
    finally:
        store.close()
    # The files' contents are synced (LMDB's commit, empty files); their
    # names are durable only once their directories are.
    for d in (meta, path):
        fsync_dir(d)


def write_empty_disk(store, size: int, block_size: int) -> None:
    """Commit an empty disk's trees and records into a new node store (any kind)."""
    forest = Forest(store)
    extent = Layout("u64", "u64")
    for name in (RUNNING_TREE, VBA_TREE, FREE_TREE):
        forest.create_tree(name, extent)
    forest.create_tree(CSUM_TREE, Layout("u64", f"bytes:{CSUM_BYTES}"))
    forest.meta_put(b"disk/config", fmt.encode_config(fmt.Config(block_size, size, time.time_ns())))
    forest.meta_put(b"disk/state", fmt.encode_state(fmt.State(1, 1, 0, None)))
    forest.commit()


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def _rename_noreplace(src: str, dst: str):
    """rename(2) that fails with EEXIST instead of replacing an empty directory."""
    r = _libc.renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
    if r == 0:
        return
    err = ctypes.get_errno()
    if err not in (errno.EINVAL, errno.ENOSYS):
        raise OSError(err, os.strerror(err), dst)
    # A file system without the flag: the check and the rename are two steps.
    if os.path.lexists(dst):
        raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), dst)
    os.rename(src, dst)


def _remove_stale_builds(parent: str, base: str):
    """Remove half-built containers of ``base`` whose creating process is gone."""
    prefix = f".{base}.creating-"
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        if not name.startswith(prefix) or not name[len(prefix):].isdigit():
            continue
        try:
            os.kill(int(name[len(prefix):]), 0)
        except ProcessLookupError:
            _remove_tree(os.path.join(parent, name))
        except OSError:
            pass


def _create_private(path: str):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str):
    """fsync a directory, so the entries made in it survive a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _reserve(path: str, size: int):
    """Create ``path`` with ``size`` bytes really allocated.

    LMDB mmaps its reader table (lock.mdb) after growing it sparse; on a full
    file system the first store into it is a SIGBUS, not an error. Allocating
    it first turns that into ENOSPC here.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.posix_fallocate(fd, 0, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_tree(path: str):
    shutil.rmtree(path, ignore_errors=True)
