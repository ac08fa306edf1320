"""vdisk.units: human sizes in and out."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from vdisk.errors import InvalidArgument, VdiskError
from vdisk.units import format_size, parse_size

K, M, G, T, P = (1 << 10), (1 << 20), (1 << 30), (1 << 40), (1 << 50)


@pytest.mark.parametrize("text, want", [
    ("10G", 10 * G), ("512M", 512 * M), ("1T", T), ("1.5G", 3 * G // 2), ("4096", 4096), ("0", 0),
    ("1K", K), ("2P", 2 * P), ("10g", 10 * G), ("10GiB", 10 * G), ("10GB", 10 * G), ("10gib", 10 * G),
    (" 10 G ", 10 * G), ("0.5K", 512), ("1.25M", 5 * M // 4), ("007M", 7 * M), ("1B", 1),
    (4096, 4096), (10 * G, 10 * G),
])
def test_parse_size(text, want):
    got = parse_size(text)
    assert got == want and type(got) is int


@pytest.mark.parametrize("text", [
    "", " ", "G", "-1G", "+1G", "1.5", "0.1K", "1.1T", "abc", "10X", "1e9", "0x10", "1..5G", "1.G",
    ".5G", "10 GB extra", "10GG", "1,5G", "inf", "nan", "1_000",
])
def test_parse_size_refuses(text):
    with pytest.raises(InvalidArgument) as ei:
        parse_size(text)
    assert isinstance(ei.value, VdiskError)
    assert repr(text) in str(ei.value)


def test_parse_size_is_exact_for_large_numbers():
    assert parse_size("9007199254740993") == 2**53 + 1
    assert parse_size("4611686018427387905") == 2**62 + 1


@pytest.mark.parametrize("n, want", [
    (0, "0B"), (1, "1B"), (1023, "1023B"), (K, "1K"), (1536, "1.5K"), (10 * G, "10G"), (T, "1T"),
    (3 * G // 2, "1.5G"), (512 * M, "512M"), (2 * P, "2P"), (1024 * P, "1024P"), (M + M // 4, "1.25M"),
])
def test_format_size(n, want):
    assert format_size(n) == want


@given(st.integers(0, 1023), st.sampled_from([1, K, M, G, T, P]), st.sampled_from([0, 1, 2, 3]))
def test_format_parse_round_trip(whole, unit, quarters):
    """Sizes with at most two decimals in their unit survive format -> parse."""
    n = whole * unit + quarters * unit // 4 if unit >= 4 else whole
    assert parse_size(format_size(n)) == n


@given(st.integers(0, 1 << 62))
@example(10880)
def test_format_size_is_close(n):
    """At most 0.5% off, in the largest unit the size reaches."""
    text = format_size(n)
    unit = {"B": 1, "K": K, "M": M, "G": G, "T": T, "P": P}[text[-1]]
    value = float(text[:-1])
    # Two decimals round by at most half a hundredth of the unit (10880 bytes
    # is 10.625K, printed 10.62K: exactly that far, give or take float error).
    assert abs(value * unit - n) <= unit * 0.005 * (1 + 1e-9)
    assert n < K if unit == 1 else n >= unit
