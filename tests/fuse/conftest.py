"""Fixtures for the FUSE tests (see fuse_util.py for what they start)."""

from __future__ import annotations

import os

import pytest

from fuse_util import Mounted, is_mounted, missing
from vdisk import Disk


def pytest_collection_modifyitems(config, items):
    lacking = missing()
    if not lacking:
        return
    # ./dev setup installs the tools, so in CI a missing one is a failure, not a skip.
    reason = f"needs {', '.join(lacking)} (./dev setup installs the tools; /dev/fuse must be usable)"
    mark = (pytest.mark.xfail(reason=reason, run=False, strict=True) if os.environ.get("CI")
            else pytest.mark.skip(reason=reason))
    here = os.sep + os.path.join("tests", "fuse") + os.sep
    for item in items:
        if here in str(item.fspath):
            item.add_marker(mark)


@pytest.fixture
def disk(tmp_path):
    """A fresh 64 MiB disk, closed: what ``vdisk create D --size 64M`` makes
    (the same Disk.create call), made in this process - a ``vdisk`` child
    for each of the ~70 tests that take it cost ~0.25 s apiece. tests/cli
    covers the command itself."""
    path = str(tmp_path / "d.vdisk")
    Disk.create(path, 64 << 20).close()
    return path


@pytest.fixture
def mount(tmp_path):
    """Factory: mount(disk, mountpoint=None, *args) -> Mounted; all unmounted at teardown."""
    mounts = []

    def start(disk, mountpoint=None, *args):
        m = Mounted(disk, mountpoint or str(tmp_path / f"mnt{len(mounts)}"))
        mounts.append(m)   # before starting: a half-started mount is cleaned up too
        m.start(*args)
        return m

    yield start
    for m in mounts:
        m.cleanup()
    left = [m.mp for m in mounts if is_mounted(m.mp)]
    assert not left, f"mounts left behind: {left}"
