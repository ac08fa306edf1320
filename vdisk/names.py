"""Names shared by the engine and its readers: trees, records, snapshot names.

The on-disk names (trees, record keys) are part of the format: renaming one
here is a format change. Snapshot names follow one rule for creating and a
looser one for finding, so that names made under an older rule stay usable.
"""

from __future__ import annotations

import blake3

from vdisk.errors import IntegrityError, InvalidArgument, NotFound, quote

CSUM_BYTES = 16
# Snapshot names: printable, at most SNAPSHOT_NAME_BYTES of UTF-8, not
# starting with '-' (it would read as an option, and '-' is "none" in lists)
# or '.' ('.', '..' and hidden files in a mount), no '/' (a path in a mount)
# and no '~' (the prefix of deferred deletions). Spaces inside are allowed.
SNAPSHOT_NAME_BYTES = 128
SNAPSHOT_NAME_RULE = (f"a snapshot name is 1 to {SNAPSHOT_NAME_BYTES} bytes of printable UTF-8, not starting "
                      f"with '-', '.' or a space, not ending with a space, without '/' or '~'")

RUNNING_TREE = "lba"
VBA_TREE = "vba"
CSUM_TREE = "csum"
FREE_TREE = "free"
SNAP_TREE_PREFIX = "snap/"
# An online conversion's second writable tree and its record (vdisk/anchor.py).
ANCHOR_TREE = "anchor"
ANCHOR_KEY = b"disk/anchor"
# The redo log's current epoch (vdisk/journal.py, vdisk/logformat.py).
LOG_KEY = b"disk/log"
SNAP_META_PREFIX = b"disk/snap/"
# Records of the layers above the engine (a conversion's progress, a
# receive's staging): opaque bytes to the engine, each layer encodes its own.
EXTRA_META_PREFIX = b"ext/"
# Snapshots deleted while they were the base of several others; users cannot
# name them (see snapshots/delete.py).
DEFERRED_PREFIX = "~"


def checksum(block) -> bytes:
    return blake3.blake3(block).digest(CSUM_BYTES)


def check_snapshot_lookup(name: str):
    """Refuse what cannot name an existing snapshot, but no more than that.

    Snapshots made under an older, looser rule (names like ``-`` or ``..``)
    must stay reachable to be read, reverted to and deleted; only creating
    (and renaming) applies the full rule. Hidden deferred snapshots are not
    users' to name.
    """
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"bad snapshot name {name!r}: it must be a non-empty string")
    if name.startswith(DEFERRED_PREFIX) or "/" in name or "\0" in name:
        raise NotFound(f"no snapshot named {quote(name)}")
    try:
        name.encode()
    except UnicodeEncodeError:
        raise InvalidArgument(f"bad snapshot name {quote(name)}: it is not valid UTF-8") from None


def validate_snapshot_name(name: str):
    """Refuse a name outside the rule (SNAPSHOT_NAME_RULE), saying what is wrong."""
    if not isinstance(name, str):
        raise InvalidArgument(f"bad snapshot name {name!r}: it must be a string")
    try:
        size = len(name.encode())
    except UnicodeEncodeError:
        size = None
    if not name:
        why = "it is empty"
    elif size is None:
        why = "it is not valid UTF-8"
    elif size > SNAPSHOT_NAME_BYTES:
        why = f"it is {size} bytes long, more than {SNAPSHOT_NAME_BYTES}"
    elif name[0] in "-.":
        why = f"it starts with {name[0]!r}"
    elif "/" in name or "~" in name:
        why = f"it contains {'/' if '/' in name else '~'!r}"
    elif not name.isprintable():
        why = "it contains a control or other unprintable character"
    elif name != name.strip():
        why = "it starts or ends with a space"
    else:
        return
    raise InvalidArgument(f"bad snapshot name {quote(name)}: {why} ({SNAPSHOT_NAME_RULE})")


def snapshot_name(key: bytes) -> str:
    """The name in a snapshot record's key."""
    try:
        return key[len(SNAP_META_PREFIX):].decode()
    except UnicodeDecodeError:
        raise IntegrityError(f"snapshot record key {key[:80]!r} is not UTF-8: the disk is damaged; "
                             f"run vdisk verify") from None
