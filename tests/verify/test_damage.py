"""Each kind of damage is found, and the report names the kind and the place.

Damage is injected into a copy of a disk with 12 snapshots: bytes changed in
LMDB or in the data file of the closed disk, or wrong but well-formed entries
committed through the engine's own trees (as an engine bug would write them).
"""

from __future__ import annotations

import os

import pytest

from vdisk import Disk
from vdisk import format as fmt
from vdisk.btree import format as bfmt
from vdisk.extents import pack
from vdisk.snapshots.verify import verify

from .util import lba_extents, leaf_ids, node_ids, put_raw_meta, put_raw_node, raw_node


def _problems(report, kind):
    return [p for p in report.problems if p.kind == kind]


def _one_line(report):
    for p in report.problems:
        assert "\n" not in f"{p.kind}: {p.where}: {p.what}"


def _new_leaf(path, tree, older):
    """A leaf of ``tree`` that ``older`` does not share (so ``tree`` is the first to reach it)."""
    with Disk.open(path, readonly=True) as d:
        ids = [i for i in leaf_ids(d, tree) if i not in set(leaf_ids(d, older))]
    assert ids
    return ids[0]


def test_clean_copy_is_clean(disk_copy):
    assert verify(disk_copy, data=True).ok


def test_flipped_byte_in_a_node_is_named(disk_copy):
    node = _new_leaf(disk_copy, "snap/s5", "snap/s4")
    buf = bytearray(raw_node(disk_copy, node))
    buf[200] ^= 0x10
    put_raw_node(disk_copy, node, bytes(buf))
    r = verify(disk_copy)
    corrupt = _problems(r, "corrupt")
    # Named for s5 first, then for each later tree that still shares it.
    assert corrupt[0].where.startswith(f"snapshot 's5' node {node}") and "checksum mismatch" in corrupt[0].what
    assert all(f"node {node}" in p.where for p in corrupt)
    # What cannot be read is not guessed at: no false leaks from the lost leaf.
    assert "vba-leak" not in r.kinds() and "leak" not in r.kinds()
    assert any("not checked" in n for n in r.notes)
    _one_line(r)


def test_missing_node_is_named(disk_copy):
    node = _new_leaf(disk_copy, "lba", "snap/s11")
    put_raw_node(disk_copy, node, None)
    r = verify(disk_copy)
    (p,) = _problems(r, "missing")
    assert p.where.startswith(f"running point node {node}") and "missing" in p.what


def test_broken_key_order_is_named(disk_copy):
    node = _new_leaf(disk_copy, "snap/s3", "snap/s2")
    d = bfmt.decode_node(node, raw_node(disk_copy, node))
    keys, vals = list(d.keys), list(d.vals)
    keys[3], keys[4] = keys[4], keys[3]
    put_raw_node(disk_copy, node, bfmt.encode_node(node, d.seq, d.leaf, d.layout, keys, vals))
    r = verify(disk_copy)
    p = _problems(r, "key-order")[0]
    assert p.where.startswith(f"snapshot 's3' node {node}")


def test_stored_node_no_tree_reaches_is_a_leak(disk_copy):
    with Disk.open(disk_copy, readonly=True) as d:
        leaf = leaf_ids(d, "lba")[0]
        orphan = d.forest.next_node_id
    node = bfmt.decode_node(leaf, raw_node(disk_copy, leaf))
    # A copy of a leaf under a newly counted id that no tree points at.
    put_raw_node(disk_copy, orphan, bfmt.encode_node(orphan, node.seq, True, node.layout, node.keys, node.vals))
    put_raw_meta(disk_copy, b"counter/node", bfmt.encode_u64(orphan + 1))
    r = verify(disk_copy)
    (p,) = r.problems
    assert p.kind == "leak" and p.where == f"node store nodes {orphan}"


def test_node_in_use_beyond_the_node_counter_is_named(disk_copy):
    with Disk.open(disk_copy, readonly=True) as d:
        top = max(node_ids(d, "lba"))
    put_raw_meta(disk_copy, b"counter/node", bfmt.encode_u64(top))
    r = verify(disk_copy)
    assert any(p.kind == "counter" and p.where == f"node {top}" for p in r.problems)


def test_dropped_vba_entry_is_named_by_every_tree_mapping_it(open_copy):
    d = open_copy
    (lba, vba, n) = lba_extents(d, "snap/s0")[100]
    # Drop the VBA -> PBA entry that holds that VBA.
    key, packed = d._vba.tree.floor(vba)
    d._vba.tree.delete(key)
    d._commit()
    d.close()
    r = verify(d.path)
    unmapped = _problems(r, "unmapped")
    assert any(p.where.startswith(f"snapshot 's0' LBA {lba}") and f"VBA {vba}" in p.what for p in unmapped)
    # Its checksum is now an orphan and its PBAs neither mapped nor free.
    assert "csum" in r.kinds() and "alloc" in r.kinds()
    _one_line(r)


def test_pba_mapped_twice_is_named(open_copy):
    d = open_copy
    d.write(0, os.urandom(8 * d.block_size))       # two VBA extents of the running point
    d.write(100 * d.block_size, os.urandom(8 * d.block_size))
    d.flush()
    (v1, p1, n1), (v2, p2, n2) = list(d._vba.extents())[-2:]
    d._vba.tree.insert(v2, pack(p1, n2))            # both now claim p1..
    d._commit()
    d.close()
    r = verify(d.path)
    double = _problems(r, "pba-double")
    assert any(p.where.startswith(f"PBA {p1}") and f"VBA {v2}" in p.what and f"VBA {v1}" in p.what
               for p in double), double
    assert any(q.kind == "alloc" and "neither mapped nor free" in q.what for q in r.problems)


def test_leaked_vba_entry_is_named(open_copy):
    d = open_copy
    # A fully accounted VBA (PBA allocated, checksum present) that no tree maps.
    vba = d.state.vba_next
    d.state.vba_next += 1
    (pba, _n), = d.alloc.allocate(1)
    d._vba.map(vba, pba, 1)
    d._csum.insert(vba, bytes(16))
    d._commit()
    d.close()
    r = verify(d.path)
    assert [p.kind for p in r.problems] == ["vba-leak"], r.problems
    assert r.problems[0].where == f"VBA {vba}" and f"PBA {pba}" in r.problems[0].what


def test_missing_checksum_is_named(open_copy):
    d = open_copy
    (_lba, vba, _n) = lba_extents(d, "lba")[-1]
    d._csum.delete(vba)
    d._commit()
    d.close()
    r = verify(d.path)
    (p,) = _problems(r, "csum")
    assert p.where == f"VBA {vba}" and "no checksum" in p.what


def test_pba_both_mapped_and_free_is_named(open_copy):
    d = open_copy
    (_v, pba, _n) = next(d._vba.extents())
    d.alloc.free.insert(pba, 1)
    d._commit()
    d.close()
    r = verify(d.path)
    (p,) = _problems(r, "pba-free")
    assert p.where == f"PBA {pba}"


@pytest.mark.parametrize("delta", [+7, -3])
def test_bad_allocator_totals_are_named(open_copy, delta):
    d = open_copy
    d.close()
    state = d.state
    state.pba_end += delta
    put_raw_meta(d.path, b"disk/state", fmt.encode_state(state))
    r = verify(d.path)
    alloc = _problems(r, "alloc")
    assert alloc, r.problems
    if delta > 0:
        assert any("neither mapped nor free" in p.what and f"{delta} blocks" in p.what for p in alloc)
    else:
        assert any("past" in p.what for p in alloc)
    assert r.kinds() == {"alloc"}


def test_corrupt_data_block_is_named_with_data(disk_copy):
    with Disk.open(disk_copy, readonly=True) as d:
        (lba, vba, _n) = lba_extents(d, "snap/s7")[50]
        (_v, pba, _c), = d._vba.pieces(vba, 1)
        bs = d.block_size
    fd = os.open(os.path.join(disk_copy, "data"), os.O_RDWR)
    try:
        os.pwrite(fd, b"\xee" * 16, pba * bs + 100)
    finally:
        os.close(fd)
    assert verify(disk_copy).ok                       # metadata alone cannot see it
    r = verify(disk_copy, data=True)
    (p,) = _problems(r, "data")
    assert p.where.startswith(f"VBA {vba} (PBA {pba}") and "checksum" in p.what
    assert f"LBA {lba}" in p.where


def test_removed_snapshot_tree_is_named(open_copy):
    d = open_copy
    d.forest.drop_tree("snap/s6")
    d.forest.commit()
    d.close()
    r = verify(d.path)
    snap = _problems(r, "snapshot")
    assert any(p.where == "snapshot 's6'" and "tree" in p.what and "missing" in p.what for p in snap)
    # What only s6 held is now reached by nothing.
    assert "leak" in r.kinds()


def test_snapshot_tree_without_record_is_named(open_copy):
    d = open_copy
    d.forest.meta_put(b"disk/snap/s4", None)
    d.forest.commit()
    d.close()
    r = verify(d.path)
    assert any(p.where == "snapshot 's4'" and "no snapshot record" in p.what for p in _problems(r, "snapshot"))
    # s5's parent is gone too.
    assert any(p.where == "snapshot 's5'" and "parent 's4'" in p.what for p in _problems(r, "snapshot"))


def test_snapshot_watermark_too_low_is_an_ownership_problem(open_copy):
    d = open_copy
    rec = d.snapshot_record("s2")
    parent = d.snapshot_record("s1")
    rec.vba_watermark = parent.vba_watermark
    d.forest.meta_put(b"disk/snap/s2", fmt.encode_snapshot(rec))
    d.forest.commit()
    d.close()
    r = verify(d.path)
    own = _problems(r, "ownership")
    assert own and all(p.where.startswith("snapshot 's2' LBA") for p in own)
    assert "born after the snapshot" in own[0].what


def test_vba_counter_behind_is_named(open_copy):
    d = open_copy
    d.close()
    state = d.state
    state.vba_next -= 5
    put_raw_meta(d.path, b"disk/state", fmt.encode_state(state))
    r = verify(d.path)
    assert any(p.kind == "counter" and "vba_next" in p.what for p in r.problems)


def test_damaged_state_record_is_a_problem_not_a_crash(open_copy):
    d = open_copy
    d.close()
    put_raw_meta(d.path, b"disk/state", b"\x01garbage")
    r = verify(d.path, data=True)
    assert any(p.kind == "record" and p.where == "record disk/state" for p in r.problems)
    assert r.notes    # the checks that need it say they were skipped
