"""The one exception hierarchy of vdisk.

Every error a user can meet is a :class:`VdiskError`. Its message says what is
wrong and, where there is something to do, what to do; front ends turn it into
one line (the CLI), an errno (NBD, FUSE) or an exit code, never a traceback.

Two branches matter to callers:

* :class:`UserError` - the request was wrong (bad size, bad name, I/O out of
  range, disk busy). Nothing was changed.
* :class:`IntegrityError` - stored data or metadata is damaged, or written by a
  newer vdisk. The message names the object; the fix is ``vdisk verify``.

Exit codes (CLI) live here, in one place, so they never collide; the same
cause gives the same code from every command. :data:`EXIT_CODES` is the
table; this docstring, the README and docs/CLI.md are checked against it.

====  =================================================================
code  meaning
====  =================================================================
0     success
1     vdisk verify found problems
2     usage error or invalid argument (option, size, name, not a vdisk disk)
3     not found (disk, snapshot, file, mount)
4     already exists
5     busy: in use by another process, or the disk is closing
6     read-only (a snapshot, a read-only disk or file system)
7     no space left on the file system under the disk
8     damaged (corruption, checksum mismatch): run vdisk verify
9     written by a newer vdisk (unsupported format version)
10    the storage under the disk failed (I/O error): reopen the disk
11    permission denied
12    an image vdisk converts or exports is unusable (qemu cannot use it, a bad chain)
70    internal error (a bug in vdisk): --debug shows the traceback
130   interrupted (Ctrl-C)
141   stdout was closed early (a reader such as head exited)
====  =================================================================

An :class:`OSError` that reaches a front end becomes the class that fits its
errno (:func:`from_os_error`), so a missing file is 3 and a full file system
7 whichever command met them.

``vdisk verify`` exits 0 when the disk is clean and 1 when it found problems
(each one a line of its report); a disk it cannot open at all gives the
code of the reason, as from every other command.
"""

from __future__ import annotations

import errno as _errno

# Longest piece of user input a message repeats: a 10 kB name echoed whole
# would bury the message.
QUOTE_CHARS = 64


def quote(text, limit: int = QUOTE_CHARS) -> str:
    """``text`` as repr() quotes it, cut to ``limit`` characters with its full length beside."""
    if not isinstance(text, str) or len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


class VdiskError(Exception):
    """Base of every vdisk error."""

    exit_code = 2
    errno = _errno.EIO


class UserError(VdiskError):
    """The request cannot be carried out as given; nothing was changed."""


class InvalidArgument(UserError):
    """A size, name, offset or length is not acceptable."""

    errno = _errno.EINVAL


class NotADisk(InvalidArgument):
    """The path exists but holds no vdisk disk (no meta/ and no data file)."""

    def __init__(self, path: str):
        self.path = path
        super().__init__(f"{path} is not a vdisk disk (it has no meta/ directory); "
                         f"make one with: vdisk create {path} --size SIZE")


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


class PermissionDenied(UserError):
    """The operating system refused access to a file of the disk (EACCES, EPERM)."""

    exit_code = 11
    errno = _errno.EACCES


class ImageError(UserError):
    """An image outside vdisk (a qemu chain to convert, a file to export to)
    cannot be used: unreadable, unsupported, encrypted, or a broken chain."""

    exit_code = 12
    errno = _errno.EINVAL


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


class Interrupted(VdiskError):
    """The user stopped the command (Ctrl-C) before it was done."""

    exit_code = 130
    errno = _errno.EINTR


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


# (code, meaning): the exit codes every front end uses; see the module docstring.
EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = Interrupted.exit_code
EXIT_PIPE = 141
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "success"),
    (EXIT_PROBLEMS, "vdisk verify found problems"),
    (InvalidArgument.exit_code, "usage error or invalid argument (option, size, name, not a vdisk disk)"),
    (NotFound.exit_code, "not found (disk, snapshot, file, mount)"),
    (AlreadyExists.exit_code, "already exists"),
    (Busy.exit_code, "busy: in use by another process, or the disk is closing"),
    (ReadOnly.exit_code, "read-only (a snapshot, a read-only disk or file system)"),
    (NoSpace.exit_code, "no space left on the file system under the disk"),
    (IntegrityError.exit_code, "damaged (corruption, checksum mismatch): run vdisk verify"),
    (UnsupportedVersion.exit_code, "written by a newer vdisk (unsupported format version)"),
    (StorageError.exit_code, "the storage under the disk failed (I/O error): reopen the disk"),
    (PermissionDenied.exit_code, "permission denied"),
    (ImageError.exit_code, "an image vdisk converts or exports is unusable (qemu cannot use it, a bad chain)"),
    (EXIT_INTERNAL, "internal error (a bug in vdisk): --debug shows the traceback"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C)"),
    (EXIT_PIPE, "stdout was closed early (a reader such as head exited)"),
)

_ERRNO_CLASSES = {
    _errno.ENOENT: NotFound,
    _errno.EEXIST: AlreadyExists, _errno.ENOTEMPTY: AlreadyExists,
    _errno.EBUSY: Busy, _errno.EAGAIN: Busy, _errno.ETXTBSY: Busy,
    _errno.EROFS: ReadOnly,
    _errno.ENOSPC: NoSpace, _errno.EDQUOT: NoSpace, _errno.EFBIG: NoSpace,
    _errno.EACCES: PermissionDenied, _errno.EPERM: PermissionDenied,
    _errno.EISDIR: InvalidArgument, _errno.ENOTDIR: InvalidArgument, _errno.EINVAL: InvalidArgument,
    _errno.ENAMETOOLONG: InvalidArgument, _errno.ELOOP: InvalidArgument,
}


def from_os_error(e: OSError) -> VdiskError:
    """The vdisk error that says what ``e`` means to a user, naming its file.

    Unknown errnos are storage failures: the system under the disk refused
    something vdisk expected to work.
    """
    cls = _ERRNO_CLASSES.get(e.errno, StorageError)
    names = [n for n in (e.filename, e.filename2) if n is not None]
    what = e.strerror or str(e) or type(e).__name__
    err = cls(f"{' -> '.join(map(str, names))}: {what}" if names else what)
    err.errno = e.errno or err.errno
    return err
