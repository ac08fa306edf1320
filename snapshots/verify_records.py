"""Phase 1 of ``vdisk verify``: the records, before any tree is walked.

``disk/config``, ``disk/state`` and every ``disk/snap/NAME`` decode; every
snapshot record has its tree and every snapshot tree a record; parents exist,
are older and have no later watermark; no counter is behind what it
numbered. What decodes here (block size, records, the deletion in progress)
is what the walk holds the trees against, so a record that does not decode
leaves the checks that need it skipped, with a note, rather than guessed.
"""

from __future__ import annotations

from vdisk import format as fmt
from vdisk import logformat
from vdisk.names import ANCHOR_KEY, ANCHOR_TREE, LOG_KEY, SNAP_META_PREFIX, SNAP_TREE_PREFIX
from vdisk.errors import IntegrityError, UnsupportedVersion

from .verify_report import tree_label
from .verify_state import CORE_TREES, DELETING_KEY, EXTENT


def _decode(v, where: str, decode, *args):
    """A decoded record, or None with the problem reported."""
    try:
        return decode(*args)
    except IntegrityError as e:
        v.problem("version" if isinstance(e, UnsupportedVersion) else "record", where, str(e))
    except UnicodeDecodeError:
        # vdisk.format decodes the names in records without catching this.
        v.problem("record", where, "a name in the record is not UTF-8: the record is damaged")
    return None


def check_records(v):
    f = v.forest
    try:
        fmt.decode_config(f.meta_get(b"disk/config"))
    except UnsupportedVersion:
        raise           # a newer disk cannot be verified by this vdisk at all
    except IntegrityError:
        pass
    v.config = _decode(v, "record disk/config", fmt.decode_config, f.meta_get(b"disk/config"))
    if v.config is not None:
        bs = v.config.block_size
        if bs < 512 or bs > 65536 or bs & (bs - 1):
            # decode_config does not check it; nothing sized by it can be trusted.
            v.problem("record", "record disk/config", f"block size {bs} is not a power of two from 512 "
                      f"to 65536: the record is damaged")
            v.config = None
        else:
            v.block_size = bs
    v.state = _decode(v, "record disk/state", fmt.decode_state, f.meta_get(b"disk/state"))
    for key, buf in f.meta_items(SNAP_META_PREFIX):
        name = key[len(SNAP_META_PREFIX):].decode(errors="replace")
        rec = _decode(v, f"record disk/snap/{name}", fmt.decode_snapshot, name, buf)
        if rec is not None:
            v.records[name] = rec
    v.report.snapshots = len(v.records)
    buf = f.meta_get(DELETING_KEY)
    if buf is not None:
        v.deletion = _decode(v, "record disk/deleting", fmt.decode_deletion, buf)
        if v.deletion is not None:
            v.note(f"a deletion of snapshot {v.deletion.name!r} is in progress "
                   f"({len(v.deletion.node_ids)} nodes still to free)")
        elif v.problems[-1].kind == "record":
            v.problems[-1].kind = "deletion"

    buf = f.meta_get(ANCHOR_KEY)
    if buf is not None:
        v.anchor = _decode(v, "record disk/anchor", fmt.decode_anchor, buf)
        if v.anchor is not None:
            v.note("an online conversion is in progress (the anchor tree holds the layers converted so far)")
    names = set(f.tree_names())
    if (ANCHOR_TREE in names) != (buf is not None):
        v.problem("record", "conversion anchor", "the anchor tree and its record disk/anchor do not "
                  "come together" if buf is None else "record disk/anchor has no anchor tree")
    log = f.meta_get(LOG_KEY)
    if log is not None:
        v.log = _decode(v, "record disk/log", logformat.decode_log, log)
    for name in CORE_TREES:
        if name not in names:
            v.problem("record", tree_label(name), f"the tree {name!r} is missing")
            v.incomplete.add(name)
    for name in sorted(names):
        if name.startswith(SNAP_TREE_PREFIX):
            if name[len(SNAP_TREE_PREFIX):] not in v.records:
                v.problem("snapshot", tree_label(name),
                          f"tree {name!r} has no snapshot record (disk/snap/{name[len(SNAP_TREE_PREFIX):]})")
        elif name not in CORE_TREES and name != ANCHOR_TREE:
            v.problem("snapshot", f"tree {name!r}", "is neither a snapshot nor a map vdisk uses")
    for rec in v.records.values():
        _check_snapshot_record(v, rec, names)
    _check_state(v)
    for name in sorted(names):
        _check_tree_record(v, name)


def _check_snapshot_record(v, rec: fmt.SnapshotRecord, names: set):
    where = f"snapshot {rec.name!r}"
    f = v.forest
    if SNAP_TREE_PREFIX + rec.name not in names:
        v.problem("snapshot", where, f"has a record but its tree {SNAP_TREE_PREFIX + rec.name!r} is missing")
    if rec.parent is not None:
        parent = v.records.get(rec.parent)
        if parent is None:
            v.problem("snapshot", where, f"its parent {rec.parent!r} does not exist")
        else:
            if parent.seq > rec.seq:
                v.problem("snapshot", where, f"its parent {rec.parent!r} (seq {parent.seq}) is not older "
                          f"than it (seq {rec.seq})")
            if parent.vba_watermark > rec.vba_watermark:
                v.problem("snapshot", where, f"its watermark {rec.vba_watermark} is below its parent "
                          f"{rec.parent!r}'s ({parent.vba_watermark})")
    if rec.seq > f.seq:
        v.problem("counter", where, f"taken at seq {rec.seq}, but the seq counter is at {f.seq}")
    if v.state is not None and rec.vba_watermark > v.state.vba_next:
        v.problem("counter", where, f"its watermark {rec.vba_watermark} is above vba_next "
                  f"{v.state.vba_next}")
    if v.block_size and (rec.size <= 0 or rec.size % v.block_size):
        v.problem("snapshot", where, f"size {rec.size} is not a positive multiple of the block size "
                  f"{v.block_size}")


def _check_state(v):
    s = v.state
    if s is None:
        return
    where = "running point"
    if s.vba_watermark > s.vba_next:
        v.problem("counter", where, f"watermark {s.vba_watermark} is above vba_next {s.vba_next}")
    if s.parent is not None:
        parent = v.records.get(s.parent)
        if parent is None:
            v.problem("snapshot", where, f"its parent snapshot {s.parent!r} does not exist")
        elif parent.vba_watermark > s.vba_watermark:
            v.problem("snapshot", where, f"its watermark {s.vba_watermark} is below its parent "
                      f"{s.parent!r}'s ({parent.vba_watermark})")
    a = v.anchor
    if a is not None:
        if not 1 <= a.vba_watermark <= a.vba_next <= a.vba_limit <= s.vba_watermark:
            v.problem("counter", "conversion anchor", f"counters out of order: watermark {a.vba_watermark}, "
                      f"next {a.vba_next}, limit {a.vba_limit}, running point's watermark {s.vba_watermark}")
        if a.parent is not None and a.parent not in v.records:
            v.problem("snapshot", "conversion anchor", f"its parent snapshot {a.parent!r} does not exist")
        if s.parent is not None:
            v.problem("snapshot", where, "has a parent while a conversion's anchor exists")
    if v.config is not None and (v.config.size <= 0 or v.config.size % v.config.block_size):
        v.problem("record", "record disk/config", f"disk size {v.config.size} is not a positive "
                  f"multiple of the block size {v.config.block_size}")


def _check_tree_record(v, name: str):
    f = v.forest
    try:
        rec = f.tree(name).rec
    except IntegrityError:
        return  # check_tree reports it
    where = tree_label(name)
    snap = name.startswith(SNAP_TREE_PREFIX)
    want = EXTENT if snap or name == ANCHOR_TREE else CORE_TREES.get(name)
    if want is not None and rec.layout != want:
        v.problem("layout", where, f"tree record has layout {rec.layout}, expected {want}")
        v.incomplete.add(name)
    if snap and not rec.frozen:
        v.problem("snapshot", where, "its tree is writable, not frozen")
    if name in CORE_TREES and rec.frozen:
        v.problem("record", where, "the tree is frozen, so it can never change")
    if snap:
        r = v.records.get(name[len(SNAP_TREE_PREFIX):])
        if r is not None and rec.snap_seq != r.seq:
            v.problem("snapshot", where, f"its tree was taken at seq {rec.snap_seq}, the record says {r.seq}")
    if max(rec.snap_seq, rec.created_seq) > f.seq:
        v.problem("counter", where, f"tree record names seq {max(rec.snap_seq, rec.created_seq)}, but the "
                  f"seq counter is at {f.seq}")
