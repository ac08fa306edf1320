"""The writes a rados_disk_child.py makes, for the child and the tests that check them."""

from __future__ import annotations

import random


def pattern(seed: int, length: int) -> bytes:
    """Deterministic bytes with no zero byte (as tests/engine/util.py's)."""
    return random.Random(seed).randbytes(length).replace(b"\0", b"\1")


def run_write(seed: int, k: int) -> tuple[int, bytes]:
    """Write k of a ``run``: (offset, data), 4 KiB to 192 KiB in the first 8 MiB."""
    rng = random.Random(seed * 100003 + k)
    return rng.randrange(0, 2048) * 4096, pattern(seed * 100003 + k, rng.randrange(1, 49) * 4096)
