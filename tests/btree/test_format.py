"""The on-disk encoding: layouts, node / tree record / store header round trips."""

from __future__ import annotations

import hashlib
import struct
from array import array

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vdisk.btree import Layout
from vdisk.btree import format as fmt
from vdisk.btree.packed import PackedBytes
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
    assert (d.node_id, d.seq, d.leaf, list(d.keys), list(d.vals)) == (node_id, seq, leaf, keys, vals)
    assert d.layout.key == layout.key
    if leaf:
        assert d.layout == layout
    assert list(fmt.decode_node(node_id, memoryview(buf)).keys) == keys   # LMDB may hand out buffers
    # The tree relies on these types: arrays for a leaf's u64 fields, packed
    # bytes for a leaf's bytes values, else lists.
    assert type(d.keys) is (array if leaf and layout.key == "u64" else list)
    if leaf:
        assert type(d.vals) is (array if layout.value == "u64" else PackedBytes)
    else:
        assert type(d.vals) is list
    # Encoding from the decoded form (arrays) gives the same bytes as from lists.
    assert fmt.encode_node(node_id, seq, leaf, layout, d.keys, d.vals) == buf


# sha256 (first 16 bytes) of nodes written by the first version-1 encoder:
# whatever the encoder's in-memory inputs, the bytes on disk must not change.
GOLDEN = [
    (("u64", "u64"), True, 7, "db27390b3b8046fea60660a690feeb3f"),
    (("u64", "u64"), True, 252, "b10e3438b32d0aa1882c3505ab6c4e44"),
    (("u64", "u64"), False, 0, "b165a20fe6a28da6129ddda7050663ff"),
    (("u64", "bytes:16"), True, 168, "b11d077893c46d7b16823d5540da8d9d"),
    (("u64", "bytes:16"), False, 7, "b360ab50445a82a4eca50456c8a6652a"),
    (("bytes:8", "bytes:64"), True, 7, "1600c8b1ed17148ed1217d96b3f4dfa0"),
    (("bytes:3", "u64"), True, 1, "ed83d363bdda37215334b4524c8c9415"),
]


def _golden_node(layout, leaf, n):
    def f(spec, i):
        if spec == "u64":
            return (i * 0x9E3779B97F4A7C15) % 2**64
        w = int(spec[6:])
        return ((i * 2654435761) % 2**32).to_bytes(4, "big").rjust(w, b"\x5a")[-w:]
    keys = sorted({f(layout.key, i) for i in range(n)})
    vals = [f(layout.value, i + 1000) if leaf else (i * 977 + 3) % 2**64 for i in range(len(keys))]
    return 123456789 + len(keys), 987654321 + len(keys), keys, vals


@pytest.mark.parametrize("specs, leaf, n, digest", GOLDEN)
def test_node_bytes_match_the_first_version_1_encoder(specs, leaf, n, digest):
    layout = Layout(*specs)
    node_id, seq, keys, vals = _golden_node(layout, leaf, n)
    for k, v in ((keys, vals), _as_arrays(layout, leaf, keys, vals)):
        buf = fmt.encode_node(node_id, seq, leaf, layout, k, v)
        assert hashlib.sha256(buf).hexdigest()[:32] == digest


def _as_arrays(layout, leaf, keys, vals):
    return (array("Q", keys) if layout.key == "u64" else keys,
            array("Q", vals) if not leaf or layout.value == "u64" else vals)


def test_encode_refuses_entries_of_the_wrong_width():
    layout = Layout("u64", "bytes:4")
    with pytest.raises(ValueError, match="do not make 2 entries"):
        fmt.encode_node(7, 1, True, layout, [1, 2], [b"abc", b"defg"])
    with pytest.raises(ValueError, match="do not make 2 entries"):
        fmt.encode_node(7, 1, True, layout, [1, 2], [b"abcd"])


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
