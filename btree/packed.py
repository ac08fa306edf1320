"""A leaf's fixed-width bytes values, packed in one bytearray.

The checksum tree's leaves hold ~128 values of 16 bytes each. As a list of
bytes objects a leaf cost ~10 KiB (an object of 49 bytes in a 64-byte slot
and a pointer per value) and decoding one made 128 objects; packed it is the
value field exactly as it is encoded, so decoding is one copy, encoding none,
and on a 4 GiB disk the serving process holds ~60 MiB less (issue 13).

:class:`PackedBytes` behaves as the list it replaces for what the tree code
does with a leaf's values: ``len``, index (a bytes copy), iterate, slice
(another PackedBytes), assign, ``insert``, ``extend``, ``del`` of an item or
a slice, ``+``, and ``==`` with another sequence of bytes. Values are
checked to be of the width by the tree before they come here; a wrong one is
refused here too, because it would shift every entry after it.
"""

from __future__ import annotations

import struct

# Struct(n * "Ws") per (count, width): iterating a leaf's values unpacks them
# all in one C call (5x a comprehension of slices). Leaves hold at most a few
# hundred values, so this stays small.
_UNPACKERS: dict[tuple[int, int], struct.Struct] = {}


class PackedBytes:
    __slots__ = ("buf", "width")

    def __init__(self, width: int, items=(), buf: bytearray | None = None):
        self.width = width
        if buf is not None:
            self.buf = buf
        else:
            self.buf = bytearray()
            self.extend(items)

    def tobytes(self) -> bytes:
        return bytes(self.buf)

    def __len__(self):
        return len(self.buf) // self.width

    def _index(self, i: int) -> int:
        n = len(self.buf) // self.width
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("PackedBytes index out of range")
        return i * self.width

    def _span(self, s: slice) -> tuple[int, int]:
        start, stop, step = s.indices(len(self.buf) // self.width)
        if step != 1:
            raise ValueError("PackedBytes slices have step 1")
        w = self.width
        return start * w, max(start, stop) * w

    def _joined(self, items) -> bytes:
        if type(items) is PackedBytes:
            if items.width != self.width:
                raise ValueError(f"values of {items.width} bytes into {self.width}-byte values")
            return items.buf
        items = list(items)
        if items and set(map(len, items)) != {self.width}:
            raise ValueError(f"values must be {self.width} bytes each")
        return b"".join(items)

    def __getitem__(self, i):
        # The hot case first and inline: a read's checksum lookup.
        if type(i) is int and i >= 0:
            w = self.width
            a = i * w
            if a < len(self.buf):
                return bytes(self.buf[a:a + w])
        if type(i) is slice:
            a, b = self._span(i)
            return PackedBytes(self.width, buf=self.buf[a:b])
        a = self._index(i)
        return bytes(self.buf[a:a + self.width])

    def __setitem__(self, i, value):
        if type(i) is slice:
            a, b = self._span(i)
            self.buf[a:b] = self._joined(value)
            return
        if len(value) != self.width:
            raise ValueError(f"values must be {self.width} bytes each")
        a = self._index(i)
        self.buf[a:a + self.width] = value

    def __delitem__(self, i):
        if type(i) is slice:
            a, b = self._span(i)
        else:
            a = self._index(i)
            b = a + self.width
        del self.buf[a:b]

    def insert(self, i: int, value):
        if len(value) != self.width:
            raise ValueError(f"values must be {self.width} bytes each")
        n = len(self.buf) // self.width
        if i < 0:
            i = max(0, i + n)
        a = min(i, n) * self.width
        self.buf[a:a] = value

    def extend(self, items):
        self.buf += self._joined(items)

    def __add__(self, other):
        out = PackedBytes(self.width, buf=bytearray(self.buf))
        out.extend(other)
        return out

    def __iter__(self):
        w = self.width
        key = (len(self.buf) // w, w)
        s = _UNPACKERS.get(key)
        if s is None:
            s = struct.Struct(f"{w}s" * key[0])
            if len(_UNPACKERS) < 4096:
                _UNPACKERS[key] = s
        return iter(s.unpack_from(self.buf))

    def __eq__(self, other):
        if type(other) is PackedBytes:
            return self.width == other.width and self.buf == other.buf
        try:
            return list(self) == list(other)
        except TypeError:
            return NotImplemented

    __hash__ = None

    def __repr__(self):
        return f"PackedBytes({self.width}, {list(self)!r})"
