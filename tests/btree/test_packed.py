"""PackedBytes does what the list of bytes it replaced did, for every
operation the tree code uses (btree/packed.py), checked against a list."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vdisk.btree.packed import PackedBytes

W = 3
value = st.binary(min_size=W, max_size=W)
index = st.integers(-6, 6)
ops = st.one_of(
    st.tuples(st.just("set"), index, value),
    st.tuples(st.just("insert"), index, value),
    st.tuples(st.just("del"), index),
    st.tuples(st.just("delslice"), index, index),
    st.tuples(st.just("setslice"), index, index, st.lists(value, max_size=4)),
    st.tuples(st.just("extend"), st.lists(value, max_size=4)),
    st.tuples(st.just("extend_packed"), st.lists(value, max_size=4)),
    st.tuples(st.just("add"), st.lists(value, max_size=4)),
)


def _apply(seq, op, packed: bool):
    kind = op[0]
    if kind == "set":
        seq[op[1]] = op[2]
    elif kind == "insert":
        seq.insert(op[1], op[2])
    elif kind == "del":
        del seq[op[1]]
    elif kind == "delslice":
        del seq[op[1]:op[2]]
    elif kind == "setslice":
        seq[op[1]:op[2]] = op[3]
    elif kind == "extend":
        seq.extend(op[1])
    elif kind == "extend_packed":
        seq.extend(PackedBytes(W, op[1]) if packed else op[1])
    elif kind == "add":
        return seq + (PackedBytes(W, op[1]) if packed else op[1])
    return seq


@settings(max_examples=200)
@given(st.lists(value, max_size=8), st.lists(ops, max_size=12))
def test_behaves_as_a_list_of_bytes(start, steps):
    model, packed = list(start), PackedBytes(W, start)
    for op in steps:
        try:
            model = _apply(model, op, False)
        except IndexError:
            with pytest.raises(IndexError):
                _apply(packed, op, True)
            continue
        packed = _apply(packed, op, True)
        assert type(packed) is PackedBytes
        assert list(packed) == model and len(packed) == len(model)
        assert packed == model and packed.tobytes() == b"".join(model)
        for i in range(-len(model), len(model)):
            assert packed[i] == model[i] and type(packed[i]) is bytes
        assert packed[1:-1] == model[1:-1] and type(packed[1:-1]) is PackedBytes
        assert packed[:] == packed and packed[:] is not packed


def test_a_copy_or_slice_is_independent():
    a = PackedBytes(W, [b"abc", b"def"])
    b = a[:]
    b[0] = b"xyz"
    assert list(a) == [b"abc", b"def"] and list(b) == [b"xyz", b"def"]


@pytest.mark.parametrize("bad", [b"ab", b"abcd"])
def test_a_value_of_another_width_is_refused(bad):
    a = PackedBytes(W, [b"abc"])
    for change in (lambda: a.insert(0, bad), lambda: a.__setitem__(0, bad),
                   lambda: a.extend([b"xyz", bad]), lambda: a.__setitem__(slice(0, 1), [bad])):
        with pytest.raises(ValueError):
            change()
    assert list(a) == [b"abc"]
    with pytest.raises(ValueError):
        a.extend(PackedBytes(4, [b"abcd"]))
