"""Fixtures for the NBD tests (see nbd_util.py for what they start)."""

from __future__ import annotations

import os

import pytest

from nbd_util import Served, missing_tools
from vdisk import Disk


def pytest_collection_modifyitems(config, items):
    missing = missing_tools()
    # ./dev setup installs all of them: in CI a missing tool must fail the
    # tests (they run and hit it), not hide behind a skip.
    if missing and not os.environ.get("CI"):
        skip = pytest.mark.skip(reason=f"needs {', '.join(missing)} (./dev setup installs them)")
        for item in items:
            if os.sep + os.path.join("tests", "nbd") + os.sep in str(item.fspath):
                item.add_marker(skip)


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
def serve():
    """Factory: serve(disk, *args) -> Served; every server is stopped at teardown."""
    servers = []

    def start(disk, *args, env=None):
        s = Served(disk, args, env)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()
    for s in servers:
        assert not os.path.exists(s.socket), f"vdisk serve left its NBD socket {s.socket} behind"
