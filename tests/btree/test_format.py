"""The on-disk encoding: layouts, node / tree record / store header round trips."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vdisk.btree import Layout
from vdisk.btree import format as fmt
from vdisk.errors import IntegrityError, UnsupportedVersion

# ----------------------------------------------------------------- layouts


@pytest.mark.parametrize("spec, parsed", [("u64", (0, 8)), ("bytes:1", (1, 1)), ("bytes:255", (1, 255))])
def test_layout_parses_field_specs(spec, parsed):
    assert Layout(spec, spec).key_type == parsed
    assert Layout.from_types(*parsed, *parsed) == Layout(spec, spec)


@pytest.mark.parametrize("spec", ["", "u32", "bytes:0", "bytes:256", "bytes:", "bytes:x", "BYTES:8"])
def test_layout_rejects_bad_field_specs(spec):
    with pytest.raises(ValueError, match="bad B\\+tree field spec"):
        Layout(spec, "u64")
    with pytest.raises(ValueError):
        Layout("u64", spec)


fields = st.sampled_from(["u64", "bytes:1", "bytes:8", "bytes:13", "bytes:64", "bytes:200", "bytes:255"])
layouts = st.builds(Layout, fields, fields)


@given(layouts)
def test_a_full_node_fits_in_one_lmdb_page_and_one_more_entry_does_not(layout):
    for leaf, cap in ((True, layout.leaf_capacity), (False, layout.inner_capacity)):
        keys = [_field(layout.key, i) for i in range(cap + 1)]
        vals = [_field(layout.value, i) if leaf else i for i in range(cap + 1)]
        buf = fmt.encode_node(7, 1, leaf, layout, keys[:cap], vals[:cap])
        assert len(buf) <= fmt.NODE_BYTES == 4096 - 16
        with pytest.raises(ValueError, match="node 7 .* does not fit"):
            fmt.encode_node(7, 1, leaf, layout, keys, vals)


def _field(spec, i):
    if spec == "u64":
        return i
    width = int(spec[6:])
    return i.to_bytes(4, "big")[-width:].rjust(width, b"\0")


# ----------------------------------------------------------------- nodes


@st.composite
def nodes(draw):
    layout = draw(layouts)
    leaf = draw(st.booleans())
    cap = layout.leaf_capacity if leaf else layout.inner_capacity
    n = draw(st.integers(0, min(cap, 40)))

    def values(spec):
        if spec == "u64":
            return st.integers(0, 2**64 - 1)
        width = int(spec[6:])
        return st.binary(min_size=width, max_size=width)

    keys = sorted(draw(st.sets(values(layout.key), min_size=n, max_size=n)))
    vals = draw(st.lists(values(layout.value) if leaf else st.integers(0, 2**64 - 1),
                         min_size=n, max_size=n))
    node_id = draw(st.integers(1, 2**64 - 1))
    seq = draw(st.integers(0, 2**64 - 1))
    return node_id, seq, leaf, layout, keys, vals


@given(nodes())
def test_node_round_trips(node):
    node_id, seq, leaf, layout, keys, vals = node
    buf = fmt.encode_node(node_id, seq, leaf, layout, keys, vals)
    kw, vw = layout.key_type[1], layout.value_type[1] if leaf else 8
    assert len(buf) == fmt.HEADER_BYTES + len(keys) * (kw + vw)
    assert buf[:4] == b"VBTN" and buf[4] == fmt.NODE_VERSION
    d = fmt.decode_node(node_id, buf)
    assert (d.node_id, d.seq, d.leaf, d.keys, d.vals) == (node_id, seq, leaf, keys, vals)
    assert d.layout.key == layout.key
    if leaf:
        assert d.layout == layout
    assert fmt.decode_node(node_id, memoryview(buf)).keys == keys   # LMDB may hand out buffers


def test_node_header_layout_matches_the_documented_table():
    layout = Layout("bytes:3", "u64")
    buf = fmt.encode_node(0x0102030405060708, 0x1112131415161718, True, layout, [b"abc", b"abd"], [1, 2])
    assert buf[0:4] == b"VBTN"
    assert buf[4] == 1 and buf[5] == fmt.LEAF
    assert struct.unpack_from("<H", buf, 6)[0] == 2
    assert tuple(buf[8:12]) == (fmt.T_BYTES, 3, fmt.T_U64, 8)
    assert buf[12:16] == b"\0\0\0\0"
    assert struct.unpack_from("<QQ", buf, 16) == (0x1112131415161718, 0x0102030405060708)
    assert buf[48:54] == b"abcabd"
    assert struct.unpack_from("<QQ", buf, 54) == (1, 2)


# ----------------------------------------------------------------- tree records


@given(st.builds(fmt.TreeRecord, root=st.integers(0, 2**64 - 1), height=st.integers(1, 255),
                 snap_seq=st.integers(0, 2**64 - 1), count=st.integers(0, 2**64 - 1),
                 created_seq=st.integers(0, 2**64 - 1), layout=layouts, frozen=st.booleans()))
def test_tree_record_round_trips(rec):
    buf = fmt.encode_tree_record(rec)
    assert len(buf) == 40
    assert fmt.decode_tree_record("t", buf) == rec


def test_tree_record_from_a_newer_vdisk_is_refused():
    buf = bytearray(fmt.encode_tree_record(fmt.TreeRecord(1, 1, 0, 0, 0, Layout())))
    buf[0] = fmt.TREE_RECORD_VERSION + 1
    with pytest.raises(UnsupportedVersion, match="tree record 'disk' has version 2.*upgrade vdisk"):
        fmt.decode_tree_record("disk", bytes(buf))


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:-1], "tree record 'disk' is damaged \\(length 39\\)"),
    (lambda b: None, "tree record 'disk' is damaged \\(length 0\\)"),
    (lambda b: b[:2] + b"\0" + b[3:], "tree record 'disk' has height 0"),
    (lambda b: b[:3] + b"\x07" + b[4:], "tree record 'disk' has bad field types"),
])
def test_damaged_tree_record_is_an_integrity_error(damage, message):
    buf = fmt.encode_tree_record(fmt.TreeRecord(1, 1, 0, 0, 0, Layout()))
    with pytest.raises(IntegrityError, match=message):
        fmt.decode_tree_record("disk", damage(buf))


# ----------------------------------------------------------------- store header


def test_store_header_round_trips():
    fmt.check_store_header(fmt.encode_store_header())
    assert fmt.encode_store_header() == b"VBTSTORE" + struct.pack("<I", fmt.STORE_VERSION)


def test_store_header_from_a_newer_vdisk_is_refused():
    with pytest.raises(UnsupportedVersion, match="newer vdisk \\(store format 2.*upgrade vdisk"):
        fmt.check_store_header(b"VBTSTORE" + struct.pack("<I", fmt.STORE_VERSION + 1))


@pytest.mark.parametrize("buf, message", [
    (None, "missing or damaged"),
    (b"VBTSTORE", "missing or damaged"),
    (b"NOTSTORE" + struct.pack("<I", 1), "not a vdisk B\\+tree store"),
    (b"VBTSTORE" + struct.pack("<I", 0), "unknown format version 0"),
])
def test_bad_store_header_is_an_integrity_error(buf, message):
    with pytest.raises(IntegrityError, match=message):
        fmt.check_store_header(buf)


def test_u64_codec():
    for v in (0, 1, 2**64 - 1):
        assert fmt.decode_u64(fmt.encode_u64(v)) == v
