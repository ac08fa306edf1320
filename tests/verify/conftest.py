"""Fixtures of the verify tests (tests/verify)."""

from __future__ import annotations

import os
import shutil

import pytest

from vdisk import Disk

from .util import build_disk, scratch_dir


@pytest.fixture
def scratch():
    d = scratch_dir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def template():
    """A closed disk with 12 snapshots, built once; tests get copies."""
    d = scratch_dir("vdisk-verify-template-")
    path = os.path.join(d, "disk")
    build_disk(path).close()
    yield path
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def disk_copy(template, scratch):
    """Path of a private copy of the template disk (closed)."""
    path = os.path.join(scratch, "disk")
    shutil.copytree(template, path)
    return path


@pytest.fixture
def open_copy(disk_copy):
    """The template copy, open for writing; closed at teardown."""
    d = Disk.open(disk_copy)
    yield d
    try:
        d.close()
    except Exception:
        pass
