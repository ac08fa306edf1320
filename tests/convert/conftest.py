"""Fixtures of the conversion tests (tests/convert): skipped, with the
reason, where the qemu tools or the libnbd binding are missing.

``tmp_path`` and ``tmp_path_factory`` are this folder's own: the same
interface, on a memory file system when there is one (as tests/engine and
tests/replicate do), because every conversion, snapshot and checkpoint
commits LMDB with fsync - on a busy disk that was a third of the folder's
time. ``VDISK_TEST_TMPDIR`` picks another place.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from .util import missing_tools

_MISSING = missing_tools()
SCRATCH = os.environ.get("VDISK_TEST_TMPDIR") or (
    "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None)


def pytest_collection_modifyitems(config, items):
    if not _MISSING:
        return
    skip = pytest.mark.skip(reason=f"needs {', '.join(_MISSING)} (./dev setup installs them)")
    for item in items:
        if "tests/convert/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(skip)


class _Scratch:
    """What the tests use of pytest's TempPathFactory, under one directory."""

    def __init__(self, root: str):
        self.root = root

    def mktemp(self, basename: str, numbered: bool = True) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{basename}-", dir=self.root))

    def getbasetemp(self) -> Path:
        return Path(self.root)


@pytest.fixture(scope="session")
def tmp_path_factory():
    root = tempfile.mkdtemp(prefix="vdisk-convert-tests-", dir=SCRATCH)
    yield _Scratch(root)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def tmp_path(tmp_path_factory, request):
    d = tmp_path_factory.mktemp(re.sub(r"[^\w]+", "_", request.node.name)[:40])
    yield d
    shutil.rmtree(d, ignore_errors=True)
