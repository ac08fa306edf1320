"""What the mount shows: its fixed layout and inode numbers, and one node per
file or directory (shared by :mod:`.fs` and :mod:`.live`)."""

from __future__ import annotations

import pyfuse3

DISK_NAME = "disk.img"
SNAP_DIR = "snapshots"
SNAP_SUFFIX = ".img"

ROOT_INO = pyfuse3.ROOT_INODE
DISK_INO = ROOT_INO + 1
SNAPDIR_INO = ROOT_INO + 2
FIRST_SNAP_INO = ROOT_INO + 3

# The kernel may cache names and attributes this long. Every change comes
# through this process: writes and fallocate through the kernel (which then
# asks again), control operations followed by an explicit invalidation. The
# short attribute timeout is only a safety net for a notification lost.
ATTR_TIMEOUT = 1.0
ENTRY_TIMEOUT = 60.0

# How long a control operation waits for the kernel to drop what it cached.
NOTIFY_WAIT = 5.0


class Node:
    """One file or directory. Snapshot nodes die when their snapshot is deleted."""

    __slots__ = ("ino", "name", "is_dir", "snapshot", "created", "alive", "opens", "view", "allocated",
                 "changing")

    def __init__(self, ino, name, is_dir, snapshot=None, created=0.0):
        self.ino = ino
        self.name = name
        self.is_dir = is_dir
        self.snapshot = snapshot        # snapshot name, None for disk.img and dirs
        self.created = created
        self.alive = True
        self.opens = 0
        self.view = None                # the engine object reads go to
        self.allocated = None           # bytes; counted on first use (snapshots never change)
        self.changing = None            # the control op under way on it (see LiveChanges.guard)


class Handle:
    __slots__ = ("node", "writable")

    def __init__(self, node, writable):
        self.node = node
        self.writable = writable
