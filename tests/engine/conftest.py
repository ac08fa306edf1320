"""Fixtures of the disk engine tests (tests/engine)."""

from __future__ import annotations

import os
import shutil

import pytest

from vdisk import Disk

from .util import scratch_dir


@pytest.fixture
def scratch():
    """A scratch directory (on a memory file system when there is one)."""
    d = scratch_dir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def disk_path(scratch):
    """Where a test may create its disk container (not created yet)."""
    return os.path.join(scratch, "disk")


@pytest.fixture
def make_disk(disk_path):
    """``make_disk(size, block_size=4096)`` creates a disk, closed at teardown."""
    opened = []

    def make(size=1 << 20, block_size=4096, path=None):
        d = Disk.create(path or disk_path, size, block_size)
        opened.append(d)
        return d

    yield make
    for d in opened:
        try:
            d.close()
        except Exception:
            pass


@pytest.fixture
def disk(make_disk):
    """A fresh 1 MiB disk with 4 KiB blocks."""
    return make_disk()
