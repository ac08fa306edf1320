"""Fixtures for the CLI tests (helpers in util.py)."""

from __future__ import annotations

import pytest

from .util import run


@pytest.fixture
def disk(tmp_path):
    """A fresh 16 MiB disk."""
    path = tmp_path / "d.vdisk"
    r = run("create", path, "--size", "16M")
    assert r.exit_code == 0, r.stderr
    return str(path)


@pytest.fixture
def notdisk(tmp_path):
    """A directory that is not a disk (and holds a file of the user's)."""
    path = tmp_path / "photos"
    path.mkdir()
    (path / "cat.jpg").write_bytes(b"meow")
    return str(path)
