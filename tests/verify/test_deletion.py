"""A snapshot deletion in progress is a consistent state, and its record is checked.

Between the commit that hides the snapshot (``begin``) and the one that frees
its last nodes, the nodes it lists and the VBAs they map belong to the
deletion: verify must not call them leaks, and must still check them.
"""

from __future__ import annotations

from vdisk import format as fmt
from vdisk.snapshots import delete as deletion
from vdisk.snapshots.verify import verify_open_disk

from .util import node_ids


def _clean(r):
    assert r.ok, "\n".join(f"{p.kind}: {p}" for p in r.problems)


def test_every_step_of_a_deletion_verifies_clean(open_copy):
    d = open_copy
    with d._lock:
        deletion.begin(d, "s5")
    r = verify_open_disk(d, data=True)
    _clean(r)
    assert any("deletion of snapshot 's5' is in progress" in n for n in r.notes)
    deletion.run_pending(d)
    r = verify_open_disk(d, data=True)
    _clean(r)
    assert not r.notes and r.snapshots == 11


def test_deletion_listing_a_live_node_is_named(open_copy):
    d = open_copy
    live = min(node_ids(d, "snap/s7"))
    with d._lock:
        deletion.begin(d, "s5")
        rec = deletion.pending_deletion(d)
        rec.node_ids.append(live)
        d.forest.meta_put(deletion.DELETING_KEY, fmt.encode_deletion(rec))
        d._commit()
    r = verify_open_disk(d)
    assert any(p.kind == "deletion" and p.where == f"deletion of snapshot 's5' node {live}"
               and "still reaches it" in p.what for p in r.problems), r.problems
    # Undo, so that closing the disk does not finish the bad deletion.
    with d._lock:
        rec.node_ids.pop()
        d.forest.meta_put(deletion.DELETING_KEY, fmt.encode_deletion(rec))
        d._commit()


def test_damaged_deletion_record_is_named(open_copy):
    d = open_copy
    with d._lock:
        d.forest.meta_put(deletion.DELETING_KEY, b"\x01short")
        d.forest.commit()
    r = verify_open_disk(d)
    assert any(p.kind == "deletion" and p.where == "record disk/deleting" for p in r.problems)
    with d._lock:
        d.forest.meta_put(deletion.DELETING_KEY, None)
        d.forest.commit()


def test_verify_reads_the_deletion_record_under_the_key_deletion_writes():
    from vdisk.snapshots import verify_state
    assert verify_state.DELETING_KEY == deletion.DELETING_KEY


def test_verify_imports_neither_the_deletion_nor_the_engine():
    """``vdisk verify`` is a command run at boot: its start-up pays for every import."""
    import subprocess
    import sys
    code = ("import sys, vdisk.snapshots.verify; "
            "print(sorted(m for m in ('vdisk.snapshots.delete', 'vdisk.disk', 'vdisk.journal') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
