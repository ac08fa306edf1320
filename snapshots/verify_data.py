"""``vdisk verify``'s cheap look at the data file (DISK/data), without ``--data``.

The metadata can be flawless while the blocks it maps are gone: the data file
deleted, replaced by a directory, or truncated (a copy cut short, a full file
system during a restore). Reading every block (``--data``) would find that,
slowly; its presence, type and size find it at once. The size must cover the
highest PBA the VBA -> PBA map places a block at; free blocks past the end
are no loss (the allocator extends the file when it hands them out).
"""

from __future__ import annotations

import os
import stat

KIND = "data-file"

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
    have = st.st_size // block_size         # a block cut in the middle is lost too
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
    return [(KIND, where, f"is {st.st_size} bytes, but the VBA -> PBA map places blocks up to byte "
             f"{end * block_size}: {lost} of the {total} mapped blocks lie past its end and are lost "
             f"(the first at PBA {first[1]}, VBA {first[0]})")], have
