"""LMDB's data file read with pread, never mapped: is every page in use there?

LMDB maps data.mdb and trusts its meta page: touching a page in use past the
end of a truncated file kills the process with SIGBUS, which no exception
can catch. The file can also legitimately end before its last page: LMDB
does not write pages that the transaction which allocated them freed again
(measured: after 1 commit in 3,000 of the B+tree's, by one page; never in
1,500 mixed engine operations), and those pages are on its free list. So a
short file is damage exactly when a page past its end is not free. The free
list is read here with pread, which a missing page cannot kill, in LMDB
0.9's on-disk format (mdb.c: MDB_page, MDB_meta, MDB_node).
"""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass

from vdisk.errors import IntegrityError, StorageError

_PAGE_HEAD = struct.Struct("<QHHHH")     # pgno, pad, flags, lower, upper
_OVERFLOW_HEAD = struct.Struct("<QHHI")  # pgno, pad, flags, pages
_PAGE_HEAD_SIZE = 16
_DB = "IHHQQQQQ"        # pad (psize, in the free DB), flags, depth, branch/leaf/overflow pages, entries, root
_META = struct.Struct("<IIQQ" + _DB + _DB + "QQ")   # magic, version, address, map size, 2 DBs, last page, txnid
_NODE_HEAD = struct.Struct("<HHHH")      # data size (or child page) low, high, flags, key size
_MAGIC = 0xBEEFC0DE
_P_BRANCH, _P_LEAF, _P_OVERFLOW, _P_META = 0x01, 0x02, 0x04, 0x08
_F_BIGDATA, _F_SUBDATA = 0x01, 0x02
_NO_PAGE = (1 << 64) - 1


class _Unreadable(Exception):
    """A page that a walk needs is past the end of the file or malformed."""


class _Short(Exception):
    """The file ends inside its meta pages."""

    def __init__(self, size: int):
        self.size = size


@dataclass
class LmdbMeta:
    """The newest meta page of an LMDB file."""

    psize: int
    last_page: int
    txnid: int
    free_root: int
    main_root: int


def read_meta(fd: int) -> LmdbMeta | None:
    """The meta page LMDB would use, or None if the file is not LMDB's
    (LMDB then refuses it itself). IntegrityError if the file ends inside
    its meta pages: LMDB would take it for a new, empty database."""
    size = os.fstat(fd).st_size
    need = _PAGE_HEAD_SIZE + _META.size
    metas = []
    psize = None
    for i in range(2):
        buf = os.pread(fd, need, i * (psize or 0))
        if len(buf) < need:
            raise _Short(size)
        _pgno, _pad, flags, _lo, _up = _PAGE_HEAD.unpack_from(buf)
        m = _META.unpack_from(buf, _PAGE_HEAD_SIZE)
        if not flags & _P_META or m[0] != _MAGIC:
            return None
        if psize is None:
            psize = m[4]
            if psize < 512 or psize > 65536 or psize & (psize - 1):
                return None
        metas.append(LmdbMeta(psize, m[-2], m[-1], m[4 + 7], m[12 + 7]))
    if size < 2 * psize:
        raise _Short(size)
    # Like LMDB (mdb_env_pick_meta): the meta page of the newer transaction.
    return metas[1] if metas[1].txnid > metas[0].txnid else metas[0]


def walk_pages(fd: int, psize: int, root: int, leaf=None) -> set[int]:
    """Every page of the B+tree at ``root`` (with overflow pages), read with
    pread; ``leaf(key, data, flags)`` sees each leaf entry. Raises
    _Unreadable for a page past the end of the file or malformed."""
    file_pages = os.fstat(fd).st_size // psize
    pages: set[int] = set()
    stack = [] if root == _NO_PAGE else [root]

    def page(pgno: int, count: int = 1) -> bytes:
        if pgno + count > file_pages:
            raise _Unreadable(f"page {pgno + count - 1} is past the end of the file")
        if not pages.isdisjoint(range(pgno, pgno + count)):
            raise _Unreadable(f"page {pgno} is reached twice")
        pages.update(range(pgno, pgno + count))
        return os.pread(fd, count * psize, pgno * psize)

    try:
        while stack:
            pgno = stack.pop()
            buf = page(pgno)
            own, _pad, flags, lower, _upper = _PAGE_HEAD.unpack_from(buf)
            n = (lower - _PAGE_HEAD_SIZE) >> 1
            if own != pgno or not flags & (_P_BRANCH | _P_LEAF) or n < 0:
                raise _Unreadable(f"page {pgno} is not a B+tree page")
            for off in struct.unpack_from(f"<{n}H", buf, _PAGE_HEAD_SIZE):
                lo, hi, nflags, ksize = _NODE_HEAD.unpack_from(buf, off)
                if flags & _P_BRANCH:
                    stack.append(lo | hi << 16 | nflags << 32)
                    continue
                size, start = lo | hi << 16, off + _NODE_HEAD.size + ksize
                if nflags & _F_BIGDATA:
                    (first,) = struct.unpack_from("<Q", buf, start)
                    count = -(-(_PAGE_HEAD_SIZE + size) // psize)
                    big = page(first, count)
                    own, _pad, oflags, have = _OVERFLOW_HEAD.unpack_from(big)
                    if own != first or not oflags & _P_OVERFLOW or have < count:
                        raise _Unreadable(f"page {first} is not the overflow page its entry says")
                    data = big[_PAGE_HEAD_SIZE:_PAGE_HEAD_SIZE + size]
                else:
                    data = buf[start:start + size]
                if len(data) != size:
                    raise _Unreadable(f"an entry of page {pgno} runs past the page")
                if leaf is not None:
                    leaf(buf[start - ksize:start], data, nflags)
    except struct.error:
        raise _Unreadable(f"page {pgno} is malformed") from None
    return pages


def free_pages(fd: int, meta: LmdbMeta) -> set[int]:
    """The pages on LMDB's free list (records: txnid -> [count, pages...])."""
    free: set[int] = set()

    def leaf(_key, data, _flags):
        ids = struct.unpack_from(f"<{len(data) // 8}Q", data)
        if not ids or ids[0] > len(ids) - 1:
            raise _Unreadable("a free-list record is malformed")
        free.update(ids[1:1 + ids[0]])
    walk_pages(fd, meta.psize, meta.free_root, leaf)
    return free


def check_pages(file: str) -> int:
    """Refuse (IntegrityError) an LMDB file that ends before a page in use.

    Reads only, with pread: safe on any file, beside a writer, read-only.
    Returns the bytes up to the end of the last page, which a writer may
    extend the file to. A file that merely ends before pages on the free
    list is healthy (see above); the list is read only then.
    """
    try:
        fd = os.open(file, os.O_RDONLY)
    except OSError as e:
        raise _os_error(f"cannot open metadata database {file}", e) from None
    try:
        for _attempt in range(3):
            meta = _meta(fd, file)
            if meta is None:
                return 0
            size = os.fstat(fd).st_size
            need = (meta.last_page + 1) * meta.psize
            if size >= need:
                return need
            try:
                free = free_pages(fd, meta)
            except _Unreadable as e:
                problem = f"its free list cannot be read ({e})"
            else:
                lost = [p for p in range(size // meta.psize, meta.last_page + 1) if p not in free]
                if not lost:
                    return need
                problem = (f"{len(lost)} page{'s' if len(lost) > 1 else ''} in use past that end "
                           f"(first: page {lost[0]}) {'are' if len(lost) > 1 else 'is'} lost")
            again = _meta(fd, file)
            if again is None or again.txnid == meta.txnid:
                break       # not a writer's commit moving under the walk: the verdict stands
        raise IntegrityError(f"metadata database {file} is truncated: it ends at byte {size}, before its "
                             f"last page (byte {need}), and {problem}; the disk is damaged")
    except OSError as e:
        raise _os_error(f"cannot read metadata database {file}", e) from None
    finally:
        os.close(fd)


def _meta(fd: int, file: str) -> LmdbMeta | None:
    try:
        return read_meta(fd)
    except _Short as s:
        if s.size == 0:
            raise IntegrityError(f"metadata database {file} is empty: the disk's configuration record "
                                 f"and every map are gone, the disk is damaged") from None
        raise IntegrityError(f"metadata database {file} is truncated: it ends at byte {s.size}, inside "
                             f"its meta pages; the disk is damaged") from None


def _os_error(what: str, e: OSError):
    if e.errno == errno.EIO:
        return StorageError(f"{what}: {e.strerror}")
    return IntegrityError(f"{what}: {e.strerror}")
