"""Human sizes, in and out: one parser and one printer for every front end.

In: ``10G``, ``512M``, ``1.5GiB``, ``4096``, ``1e`` - a whole or decimal
number and an optional binary unit K, M, G, T, P or E (1K = 1024 bytes),
optionally followed by ``iB`` or ``B``, in any case. Out: what qemu-img
prints (``10 GiB``, ``1.5 GiB``, ``512 B``: three significant digits),
and in messages the exact bytes beside it (:func:`describe_size`), so a
rounded figure never hides the number a refusal was about.
"""

from __future__ import annotations

import re
from decimal import Decimal

from vdisk.errors import InvalidArgument, quote

UNITS = ("K", "M", "G", "T", "P", "E")
_FACTOR = {"": 1, **{u: 1 << (10 * (i + 1)) for i, u in enumerate(UNITS)}}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTPE]?)(i?B)?\s*$", re.IGNORECASE)
_PRINT_SUFFIXES = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
# A disk larger than this many times its old size is almost surely a typo
# (1024P for 1024M); growing cannot be undone, so it asks first.
GROW_CONFIRM_FACTOR = 16
_UNIT_HELP = "a number with an optional unit K, M, G, T, P or E (1K = 1024 bytes), e.g. 10G or 1.5TiB"


def parse_size(text: str | int) -> int:
    """Bytes from ``text`` (see the module docstring); ints pass through."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(text)
    if not m:
        if text.strip().startswith("-") and _SIZE.match(text.strip()[1:]):
            raise InvalidArgument(f"bad size {quote(text)}: a size cannot be negative")
        raise InvalidArgument(f"bad size {quote(text)}: use {_UNIT_HELP}")
    if m.group(3) and m.group(3).lower() == "ib" and not m.group(2):
        raise InvalidArgument(f"bad size {quote(text)}: 'iB' needs a unit before it (KiB, MiB, ...)")
    # Decimal, not float: sizes above 2**53 bytes must not be silently rounded.
    value = Decimal(m.group(1)) * _FACTOR[m.group(2).upper()]
    if value != int(value):
        raise InvalidArgument(f"size {quote(text)} is not a whole number of bytes")
    return int(value)


def format_size(n: int) -> str:
    """``n`` bytes as qemu-img prints sizes: three significant digits, binary units."""
    if n < 0:
        return "-" + format_size(-n)
    for i, suffix in enumerate(_PRINT_SUFFIXES):
        text = f"{n / (1 << (10 * i)):.3g}"
        # Below 1000 in this unit (as printed), or the largest unit there is.
        if ("e" not in text and float(text) < 1000) or i == len(_PRINT_SUFFIXES) - 1:
            return f"{text} {suffix}"
    raise AssertionError("unreachable")


def describe_size(n: int) -> str:
    """For messages: ``2000 PiB (2251799813685248000 bytes)``, ``512 bytes``."""
    text = format_size(n)
    if text.endswith(" B"):
        return "1 byte" if n == 1 else f"{n} bytes"
    return f"{text} ({n} bytes)"


def check_disk_size(size: int, block_size: int, limit: int, current: int | None = None):
    """Refuse a size for a new disk (or, with ``current``, a resize), saying why.

    The engine checks the same; this says it in sizes a person reads, and
    names the one reason that applies.
    """
    if current is not None and size < current:
        raise InvalidArgument(f"cannot shrink the disk from {describe_size(current)} to {describe_size(size)}: "
                              f"shrinking would destroy the data past the new end; only growing is supported")
    if size <= 0:
        raise InvalidArgument(f"bad size {size}: a disk needs at least one block ({describe_size(block_size)})")
    if size > limit:
        raise InvalidArgument(f"size {describe_size(size)} is larger than the limit of "
                              f"{describe_size(limit)}")
    if size % block_size:
        lower = size // block_size * block_size
        hint = f"{describe_size(lower)} or {describe_size(lower + block_size)}" if lower else \
            describe_size(block_size)
        raise InvalidArgument(f"size {describe_size(size)} is not a multiple of the block size "
                              f"{describe_size(block_size)}; use {hint}")


def check_block_size(block_size: int):
    if block_size < 512 or block_size > 65536 or block_size & (block_size - 1):
        raise InvalidArgument(f"bad block size {describe_size(block_size)}: use a power of two from "
                              f"512 bytes to 64 KiB (65536)")


def needs_confirmation(current: int, size: int) -> bool:
    """Whether growing from ``current`` to ``size`` is big enough to ask first."""
    return size > current * GROW_CONFIRM_FACTOR
