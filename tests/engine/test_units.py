"""vdisk.units: human sizes in and out."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from vdisk.errors import InvalidArgument, VdiskError
from vdisk.units import format_size, parse_size

from vdisk.units import check_block_size, check_disk_size, describe_size, needs_confirmation

K, M, G, T, P, E = (1 << 10), (1 << 20), (1 << 30), (1 << 40), (1 << 50), (1 << 60)


@pytest.mark.parametrize("text, want", [
    ("10G", 10 * G), ("512M", 512 * M), ("1T", T), ("1.5G", 3 * G // 2), ("4096", 4096), ("0", 0),
    ("1K", K), ("2P", 2 * P), ("10g", 10 * G), ("10GiB", 10 * G), ("10GB", 10 * G), ("10gib", 10 * G),
    (" 10 G ", 10 * G), ("0.5K", 512), ("1.25M", 5 * M // 4), ("007M", 7 * M), ("1B", 1),
    (4096, 4096), (10 * G, 10 * G),
    # E is a unit like the others (1E was refused while 1024P was accepted).
    ("1E", E), ("1e", E), ("1EiB", E), ("0.5E", E // 2), ("1024P", E), ("1.5 GiB", 3 * G // 2), ("1 KiB", K),
])
def test_parse_size(text, want):
    got = parse_size(text)
    assert got == want and type(got) is int


@pytest.mark.parametrize("text", [
    "", " ", "G", "-1G", "+1G", "1.5", "0.1K", "1.1T", "abc", "10X", "1e9", "0x10", "1..5G", "1.G",
    ".5G", "10 GB extra", "10GG", "1,5G", "inf", "nan", "1_000", "1iB", "1Z", "-5",
])
def test_parse_size_refuses(text):
    with pytest.raises(InvalidArgument) as ei:
        parse_size(text)
    assert isinstance(ei.value, VdiskError)
    assert repr(text) in str(ei.value)


def test_parse_size_is_exact_for_large_numbers():
    assert parse_size("9007199254740993") == 2**53 + 1
    assert parse_size("4611686018427387905") == 2**62 + 1


def test_refusals_name_every_unit_and_the_sign():
    with pytest.raises(InvalidArgument, match="K, M, G, T, P or E"):
        parse_size("10X")
    with pytest.raises(InvalidArgument, match="cannot be negative"):
        parse_size("-1")


def test_a_huge_input_is_not_echoed_whole():
    with pytest.raises(InvalidArgument) as ei:
        parse_size("9" * 10000 + "Q")
    assert len(str(ei.value)) < 300 and "(10001 characters)" in str(ei.value)


@pytest.mark.parametrize("n, want", [
    (0, "0 B"), (1, "1 B"), (999, "999 B"), (1000, "0.977 KiB"), (1023, "0.999 KiB"), (K, "1 KiB"),
    (1536, "1.5 KiB"), (10 * G, "10 GiB"), (T, "1 TiB"), (3 * G // 2, "1.5 GiB"), (512 * M, "512 MiB"),
    (2 * P, "2 PiB"), (1024 * P, "1 EiB"), (E, "1 EiB"), (M + M // 4, "1.25 MiB"), (2000 * P, "1.95 EiB"),
    ((1 << 64) - 1, "16 EiB"), (999 * K + 1000, "0.977 MiB"),
])
def test_format_size_prints_like_qemu_img(n, want):
    assert format_size(n) == want


def test_describe_size_puts_the_exact_bytes_beside():
    assert describe_size(2000 * P) == "1.95 EiB (2251799813685248000 bytes)"
    assert describe_size(512) == "512 bytes" and describe_size(1) == "1 byte"


@given(st.integers(0, 999), st.sampled_from([1, K, M, G, T, P, E]), st.sampled_from([0, 1, 2, 3]))
def test_format_parse_round_trip(whole, unit, quarters):
    """Sizes with three significant digits in their unit survive format -> parse."""
    n = whole * unit + (quarters * unit // 4 if unit >= 4 and whole < 10 else 0)
    assert parse_size(format_size(n)) == n


@given(st.integers(0, 1 << 64))
@example(10880)
def test_format_size_is_close(n):
    """Three significant digits: at most 0.5% off, in a unit where it reads below 1000."""
    value, suffix = format_size(n).split(" ")
    unit = {"B": 1, "KiB": K, "MiB": M, "GiB": G, "TiB": T, "PiB": P, "EiB": E}[suffix]
    assert abs(float(value) * unit - n) <= n * 0.005 + 1e-9 * unit
    assert float(value) < 1000 or suffix == "EiB"


def test_disk_size_refusals_give_the_real_reason_in_readable_sizes():
    with pytest.raises(InvalidArgument) as ei:
        check_disk_size(2000 * P, 4096, E)
    # Not "use a multiple of 4096": it is one; the limit is the reason.
    assert "larger than the limit of 1 EiB (1152921504606846976 bytes)" in str(ei.value)
    assert "1.95 EiB (2251799813685248000 bytes)" in str(ei.value)
    with pytest.raises(InvalidArgument, match=r"cannot shrink the disk from 1 GiB \(1073741824 bytes\) to 512 MiB"):
        check_disk_size(512 * M, 4096, E, current=G)
    with pytest.raises(InvalidArgument, match=r"not a multiple of the block size 4 KiB .*use 8 KiB .* or 12 KiB"):
        check_disk_size(10000, 4096, E)
    with pytest.raises(InvalidArgument, match="at least one block"):
        check_disk_size(0, 4096, E)
    check_disk_size(E, 4096, E)
    with pytest.raises(InvalidArgument, match="power of two from 512 bytes to 64 KiB"):
        check_block_size(3000)


def test_growing_more_than_16x_needs_confirmation():
    assert not needs_confirmation(G, 16 * G)
    assert needs_confirmation(G, 16 * G + 4096)
    assert needs_confirmation(1024 * M, 1024 * P)
