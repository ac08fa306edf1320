"""The one exception hierarchy of vdisk.

Every error a user can meet is a :class:`VdiskError`. Its message says what is
wrong and, where there is something to do, what to do; front ends turn it into
one line (the CLI), an errno (NBD, FUSE) or an exit code, never a traceback.

Two branches matter to callers:

* :class:`UserError` - the request was wrong (bad size, bad name, I/O out of
  range, disk busy). Nothing was changed.
* :class:`IntegrityError` - stored data or metadata is damaged, or written by a
  newer vdisk. The message names the object; the fix is ``vdisk verify``.

Exit codes (CLI) live here, in one place, so they never collide:

====  =========================================================
code  meaning
====  =========================================================
0     success
1     verify found problems (reserved for ``vdisk verify``)
2     usage error or invalid argument (click uses 2 as well)
3     not found (disk, snapshot)
4     already exists
5     busy (disk in use by another process)
6     read-only (write to a snapshot or a read-only disk)
7     no space left on the underlying file system
8     integrity error (corruption, checksum mismatch)
9     unsupported format version
10    the storage under the disk failed (I/O error); reopen the disk
====  =========================================================

``vdisk verify`` alone follows the convention of checkers (fsck, thin_check):
0 clean, 1 problems found, 2 the disk could not be opened at all (whatever
the reason: not found, damaged beyond reading, newer format).
"""

from __future__ import annotations

import errno as _errno


class VdiskError(Exception):
    """Base of every vdisk error."""

    exit_code = 2
    errno = _errno.EIO


class UserError(VdiskError):
    """The request cannot be carried out as given; nothing was changed."""


class InvalidArgument(UserError):
    """A size, name, offset or length is not acceptable."""

    errno = _errno.EINVAL


class NotFound(UserError):
    exit_code = 3
    errno = _errno.ENOENT


class AlreadyExists(UserError):
    exit_code = 4
    errno = _errno.EEXIST


class Busy(UserError):
    exit_code = 5
    errno = _errno.EBUSY


class ReadOnly(UserError):
    exit_code = 6
    errno = _errno.EROFS


class NoSpace(VdiskError):
    exit_code = 7
    errno = _errno.ENOSPC


class StorageError(VdiskError):
    """The file system or device under the disk failed an operation (EIO, a
    failed sync, a metadata store that can no longer be written).

    Not damage: what was committed is intact, but writes acknowledged since
    the last successful flush may be lost (Linux drops dirty pages after a
    failed write-back), so the disk stops taking requests; see DiskFailed.
    """

    exit_code = 10
    errno = _errno.EIO


class DiskFailed(StorageError):
    """An earlier failure (named in the message) stopped the disk.

    Every request after a failed write-back or commit raises this until the
    disk is closed and opened again, so no later flush can report success
    over writes that were lost. Reopening finds the last successful flush
    (plus possibly some later writes).
    """

    def __init__(self, path: str, cause: str):
        self.path = path
        self.cause = cause
        super().__init__(f"disk {path} stopped after an error ({cause}); writes since the last "
                         f"successful flush may be lost; close and reopen the disk")


class Cancelled(VdiskError):
    """Long maintenance work (snapshot deletion, compact) stopped because the
    disk is closing; what it had not finished is redone later, nothing is lost."""

    exit_code = 5
    errno = _errno.ECANCELED


class IntegrityError(VdiskError):
    """Stored data or metadata is damaged. Run ``vdisk verify`` for a report."""

    exit_code = 8
    errno = _errno.EIO


class CorruptNode(IntegrityError):
    """A B+tree node failed to decode or validate."""

    def __init__(self, node_id: int, problem: str):
        self.node_id = node_id
        self.problem = problem
        super().__init__(f"metadata node {node_id} is corrupt: {problem}")


class ChecksumMismatch(IntegrityError):
    """Data read back does not match the checksum committed with it."""


class UnsupportedVersion(IntegrityError):
    """Written by a newer (or unknown) vdisk format version."""

    exit_code = 9
