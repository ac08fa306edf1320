"""Phase 4 of ``vdisk verify``: the data file (DISK/data), the redo log in it, and with ``--data`` its blocks.

Without ``--data``, a cheap look (:func:`check_data_file`). The metadata can
be flawless while the blocks it maps are gone: the data file deleted,
replaced by a directory, or truncated (a copy cut short, a full file system
during a restore). Reading every block would find that, slowly; its
presence, type and size find it at once. The size must cover the highest PBA
the VBA -> PBA map places a block at; free blocks past the end are no loss
(the allocator extends the file when it hands them out).

With ``--data`` (:func:`data_pass`), every mapped block is read back and
checked against its blake3. A writer may move or free a block after the
view was taken, so a mismatch is only a suspect until
:func:`recheck_suspects`: it is reported when a fresh view, taken before and
again after reading the block once more, still maps that VBA to the same PBA
and checksum and the bytes still do not match.
"""

from __future__ import annotations

import os
import stat

from vdisk.btree import Forest
from vdisk.names import CSUM_TREE, VBA_TREE, checksum
from vdisk.errors import IntegrityError, UnsupportedVersion, VdiskError
from vdisk.extents import ExtentMap

KIND = "data-file"
LOG = "log"
# Blocks read per system call in the data pass.
DATA_CHUNK_BLOCKS = 256
# How often a block that keeps moving under a writer is re-read before giving up.
RECHECK_ATTEMPTS = 3

_TYPES = {stat.S_IFDIR: "a directory", stat.S_IFLNK: "a symbolic link", stat.S_IFIFO: "a FIFO",
          stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}


def check_data_file(data_path: str, block_size: int | None, mapped) -> tuple[list[tuple[str, str, str]], int | None]:
    """Problems ``(kind, where, what)`` of the data file, and how many whole
    blocks it holds (None when it cannot be read at all).

    ``mapped``: the VBA -> PBA extents as ``(vba, vba_end, pba)``.
    """
    where = f"data file {data_path}"
    total = sum(e - v for v, e, _p in mapped)
    lost_all = (f"the {total} blocks the VBA -> PBA map places in it are lost" if total
                else "no block is mapped in it yet")
    try:
        st = os.stat(data_path)
    except FileNotFoundError:
        return [(KIND, where, f"is missing: {lost_all}, and the disk cannot be opened")], None
    except OSError as e:
        return [(KIND, where, f"cannot be examined ({e.strerror}): {lost_all}")], None
    if not stat.S_ISREG(st.st_mode):
        what = _TYPES.get(stat.S_IFMT(st.st_mode), "not a regular file")
        return [(KIND, where, f"is {what}, not a regular file: {lost_all}, and the disk cannot be opened")], None
    try:
        os.close(os.open(data_path, os.O_RDONLY))
    except OSError as e:
        return [(KIND, where, f"cannot be opened ({e.strerror}): {lost_all}")], None
    if block_size is None:
        return [], None
    return _held_against_size(where, st.st_size, block_size, mapped, total)


def _held_against_size(where: str, size: int, block_size: int, mapped, total: int):
    """Problems of blocks mapped past ``size`` bytes of the PBA space, and its whole blocks."""
    have = size // block_size               # a block cut in the middle is lost too
    lost = first = None
    for v, e, p in mapped:
        if p + (e - v) > have:
            n = min(e - v, p + (e - v) - have)
            lost = (lost or 0) + n
            head = (v + (e - v) - n, p + (e - v) - n)       # its first block past the end
            if first is None or head[1] < first[1]:
                first = head
    if lost is None:
        return [], have
    end = max(p + (e - v) for v, e, p in mapped)
    return [(KIND, where, f"is {size} bytes, but the VBA -> PBA map places blocks up to byte "
             f"{end * block_size}: {lost} of the {total} mapped blocks lie past its end and are lost "
             f"(the first at PBA {first[1]}, VBA {first[0]})")], have


def check_file(v):
    """The cheap look, held against the VBA -> PBA extents the walk gathered."""
    if v.data_store is not None:
        # Not a file (RADOS objects): only its size can be held against the map.
        found, v.data_file_blocks = [], None
        if v.block_size is not None:
            found, v.data_file_blocks = _held_against_size(
                "data objects", v.data_store.size(), v.block_size, v.mapped,
                sum(e - s for s, e, _p in v.mapped))
    else:
        found, v.data_file_blocks = check_data_file(os.path.join(v.path, "data"), v.block_size, v.mapped)
    for kind, where, what in found:
        v.problem(kind, where, what)
    if VBA_TREE in v.incomplete:
        v.note("data file size: held against the readable part of the VBA map only")


def check_log(v):
    """What the redo log holds beyond the committed maps: counted, not replayed.

    A flush through the log is durable but reaches the maps only with the
    next full commit, so these flushes are no damage, only not part of what
    the other phases checked. What replay would fail on (a group that
    cannot be read, records that do not parse or name blocks outside the
    disk) is a problem.
    """
    if v.log is None:
        return
    if v.config is None or v.data_file_blocks is None:
        v.note("redo log: not read, the configuration or the data file cannot be read")
        return
    # Imported here: only a disk with a redo log needs it, and the command's
    # start-up pays for every import.
    from vdisk import journal
    try:
        blocks = _blocks(v)
    except OSError as e:
        v.problem(LOG, "redo log", f"the data file cannot be opened: {e.strerror}")
        return
    try:
        found = journal.pending(blocks.read, v.block_size, v.log, v.config.size // v.block_size, v.report.disk)
    except UnsupportedVersion as e:
        v.problem("version", "redo log", str(e))
        return
    except IntegrityError as e:
        v.problem(LOG, "redo log", str(e))
        return
    finally:
        blocks.close()
    r = v.report
    r.log_flushes, r.log_groups, r.log_dropped_groups = found.flushes, found.groups, found.dropped


def data_pass(v):
    """Read every mapped block inside the view; mismatches become suspects."""
    if v.block_size is None or VBA_TREE in v.incomplete or CSUM_TREE in v.incomplete:
        v.note("data blocks: not checked, the configuration, VBA map or checksum map cannot be read")
        return
    if v.data_file_blocks is None:
        v.note("data blocks: not checked, the data file cannot be read")
        return
    bs = v.block_size
    csum = v.forest.tree(CSUM_TREE)
    total = v.report.blocks
    done = 0
    try:
        blocks = _blocks(v)
    except OSError as e:
        v.problem("data", "data file", f"cannot be opened: {e.strerror}")
        return
    try:
        buf = bytearray(DATA_CHUNK_BLOCKS * bs)
        view = memoryview(buf)
        for v0, ve, p0 in v.mapped_sorted:
            # Blocks past the end of the file are one data-file problem, not one each.
            ve = min(ve, v0 + max(0, v.data_file_blocks - p0))
            for vba in range(v0, ve, DATA_CHUNK_BLOCKS):
                n = min(DATA_CHUNK_BLOCKS, ve - vba)
                p = p0 + (vba - v0)
                got = blocks.readinto(view[:n * bs], p * bs)
                sums = dict(csum.items(vba, vba + n))
                for i in range(n):
                    want = sums.get(vba + i)
                    if want is None:
                        continue  # reported by the metadata checks
                    if (i + 1) * bs > got or checksum(view[i * bs:(i + 1) * bs]) != want:
                        v.suspects.append((vba + i, p + i, want))
                done += n
                v.report.data_blocks += n
                v.advance("data", done, total)
    finally:
        blocks.close()


class _FileBlocks:
    """The data file, read by offset."""

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_RDONLY)

    def readinto(self, view, offset: int) -> int:
        return os.preadv(self.fd, [view], offset)

    def read(self, length: int, offset: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def close(self):
        os.close(self.fd)


class _StoreBlocks:
    """A data store (RADOS) read through its interface; the store stays open."""

    def __init__(self, store):
        self.store = store

    def readinto(self, view, offset: int) -> int:
        return self.store.readinto(view, offset)

    def read(self, length: int, offset: int) -> bytes:
        return self.store.read(length, offset)

    def close(self):
        pass


def _blocks(v):
    return _StoreBlocks(v.data_store) if v.data_store is not None else _FileBlocks(os.path.join(v.path, "data"))


def _lookup(store, vba: int):
    """(pba, checksum) of one VBA in a fresh committed view, or None."""
    with store.read_view():
        f = Forest(store, cache_nodes=64)
        pieces = ExtentMap(f.tree(VBA_TREE)).pieces(vba, 1)
        want = f.tree(CSUM_TREE).get(vba)
    if not pieces or want is None:
        return None
    return pieces[0][1], want


def recheck_suspects(v):
    """Tell damaged blocks from ones a writer moved after the view was taken."""
    bs = v.block_size
    blocks = _blocks(v)
    try:
        for vba, pba, want in v.suspects:
            for _attempt in range(RECHECK_ATTEMPTS):
                try:
                    before = _lookup(v.store, vba)
                except VdiskError:
                    before = None
                if before is None:
                    v.report.data_moved += 1     # no longer live: trimmed or deleted meanwhile
                    break
                block = blocks.read(bs, before[0] * bs)
                if len(block) == bs and checksum(block) == before[1]:
                    v.report.data_moved += (before[0], before[1]) != (pba, want)
                    break
                try:
                    after = _lookup(v.store, vba)
                except VdiskError:
                    after = None
                if after == before:
                    v.problem("data", _where_vba(v, vba, before[0]),
                              "short read: the data file ends before it" if len(block) < bs
                              else "data does not match its checksum: the block is damaged")
                    break
            else:
                v.note(f"VBA {vba}: moved by a writer on every attempt, not verified")
    finally:
        blocks.close()


def _where_vba(v, vba: int, pba: int) -> str:
    names = []
    for s, e, label, lba in v.refs:
        if s <= vba < e:
            names.append(f"{label} LBA {lba + vba - s}")
            if len(names) == 3:
                break
    return f"VBA {vba} (PBA {pba}" + (", " + ", ".join(names) if names else "") + ")"
