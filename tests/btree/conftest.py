"""Fixtures of the B+tree tests (tests/btree)."""

from __future__ import annotations

import pathlib
import shutil

import pytest

from btree_util import scratch_dir


@pytest.fixture
def scratch():
    """A scratch directory for LMDB stores (on a memory file system when there is one)."""
    d = scratch_dir()
    yield pathlib.Path(d)
    shutil.rmtree(d, ignore_errors=True)
