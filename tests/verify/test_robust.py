"""Whatever the damage, verify reports it (or says it cannot open the disk); it never crashes.

Random mutations of the metadata records and of B+tree nodes (re-encoded
with valid checksums, so the meaning is what is wrong), from fixed seeds.
"""

from __future__ import annotations

import os
import random
import shutil

import lmdb
import pytest

from vdisk.btree import format as bfmt
from vdisk import format as fmt
from vdisk.errors import IntegrityError, VdiskError
from vdisk.snapshots.verify import verify

from .util import put_raw_meta, put_raw_node, raw_node


def _meta(path):
    env = lmdb.open(os.path.join(path, "meta"), max_dbs=4, subdir=True, lock=True)
    try:
        db = env.open_db(b"meta")
        with env.begin(db=db) as txn:
            return {bytes(k): bytes(v) for k, v in txn.cursor()}
    finally:
        env.close()


def _node_ids(path):
    env = lmdb.open(os.path.join(path, "meta"), max_dbs=4, subdir=True, lock=True)
    try:
        db = env.open_db(b"nodes")
        with env.begin(db=db) as txn:
            return [int.from_bytes(k, "big") for k in txn.cursor().iternext(values=False)]
    finally:
        env.close()


def _fresh(template, scratch, i):
    path = os.path.join(scratch, f"d{i}")
    shutil.copytree(template, path)
    return path


def test_random_record_damage_is_reported_or_refused(template, scratch):
    meta = _meta(template)
    keys = sorted(meta)
    for i in range(40):
        rng = random.Random(i)
        path = _fresh(template, scratch, i)
        key = rng.choice(keys)
        buf = bytearray(meta[key])
        how = rng.choice(["flip", "truncate", "delete"])
        if how == "flip":
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
            put_raw_meta(path, key, bytes(buf))
        elif how == "truncate":
            put_raw_meta(path, key, bytes(buf[:rng.randrange(len(buf))]))
        else:
            put_raw_meta(path, key, None)
        try:
            r = verify(path, data=True)
        except VdiskError:
            assert key in (b"format", b"counter/seq", b"counter/node"), (key, how)
        else:
            if how != "flip":
                assert not r.ok, (key, how)
        shutil.rmtree(path)


def test_random_node_damage_is_reported(template, scratch):
    ids = _node_ids(template)
    counter = bfmt.decode_u64(_meta(template)[b"counter/seq"])
    for i in range(40):
        rng = random.Random(1000 + i)
        path = _fresh(template, scratch, i)
        node_id = rng.choice(ids)
        d = bfmt.decode_node(node_id, raw_node(path, node_id))
        keys, vals = list(d.keys), list(d.vals)
        how = rng.choice(["swap", "value", "drop", "child", "seq"])
        j = rng.randrange(len(keys))
        if how == "swap" and len(keys) > 1:
            j = min(j, len(keys) - 2)
            keys[j], keys[j + 1] = keys[j + 1], keys[j]
        elif how == "value" and d.leaf:
            vals[j] = vals[j] ^ (1 << rng.randrange(1, 40)) if isinstance(vals[j], int) else os.urandom(len(vals[j]))
        elif how == "drop" and len(keys) > 1:
            del keys[j], vals[j]
        elif how == "child" and not d.leaf:
            vals[j] = rng.choice(ids)
        else:
            how = "seq"
        # Newer than anything the seq counter has handed out.
        seq = counter + 1 if how == "seq" else d.seq
        put_raw_node(path, node_id, bfmt.encode_node(node_id, seq, d.leaf, d.layout, keys, vals))
        # A changed checksum is found by the data pass, the rest by the metadata checks.
        r = verify(path, data=True)
        assert not r.ok, (node_id, how)
        shutil.rmtree(path)


def test_snapshot_record_with_a_name_that_is_not_utf8(disk_copy):
    rec = fmt.decode_snapshot("s3", _meta(disk_copy)[b"disk/snap/s3"])
    buf = fmt.encode_snapshot(rec)
    put_raw_meta(disk_copy, b"disk/snap/s3", buf[:-2] + b"\xf3\x80")     # parent name "s2" -> bad bytes
    r = verify(disk_copy)
    assert any(p.kind == "record" and p.where == "record disk/snap/s3" for p in r.problems)


def test_config_with_an_absurd_block_size(disk_copy):
    cfg = fmt.decode_config(_meta(disk_copy)[b"disk/config"])
    cfg.block_size = 1 << 30
    put_raw_meta(disk_copy, b"disk/config", fmt.encode_config(cfg))
    r = verify(disk_copy, data=True)
    assert any(p.kind == "record" and "block size" in p.what for p in r.problems)


def test_truncated_counter_cannot_be_verified(disk_copy):
    put_raw_meta(disk_copy, b"counter/seq", b"\x01\x02")
    with pytest.raises(IntegrityError, match="counters"):
        verify(disk_copy)
