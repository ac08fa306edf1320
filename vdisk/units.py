"""Human sizes: ``10G``, ``512M``, ``1T``, ``4096``, ``1.5G`` (binary units)."""

from __future__ import annotations

import re
from decimal import Decimal

from vdisk.errors import InvalidArgument

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    if isinstance(text, int):
        return text
    m = _SIZE.match(text)
    if not m:
        raise InvalidArgument(f"bad size {text!r}: use a number with an optional unit K, M, G, T (e.g. 10G)")
    # Decimal, not float: sizes above 2**53 bytes must not be silently rounded.
    value = Decimal(m.group(1)) * _UNITS[m.group(2).upper()]
    if value != int(value):
        raise InvalidArgument(f"size {text!r} is not a whole number of bytes")
    return int(value)


def format_size(n: int) -> str:
    for unit in ("P", "T", "G", "M", "K"):
        if n >= _UNITS[unit]:
            return f"{n / _UNITS[unit]:.2f}".rstrip("0").rstrip(".") + unit
    return f"{n}B"
