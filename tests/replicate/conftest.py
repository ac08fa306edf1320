"""Fixtures of the diff, send and receive tests (tests/replicate)."""

from __future__ import annotations

import shutil

import pytest

from .util import scratch_dir


@pytest.fixture
def scratch():
    """A scratch directory (on a memory file system when there is one)."""
    d = scratch_dir()
    yield d
    shutil.rmtree(d, ignore_errors=True)
