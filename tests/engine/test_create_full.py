"""Creating a disk on a nearly full file system: exit 7 (NoSpace), nothing left behind.

LMDB meets the full file system in different places depending on how much
room there is (creating the map, the first commit's pages, a short write it
reports as EIO); each must read as "no space", never as damage (8) or an
I/O failure (10).
"""

from __future__ import annotations

import os
import subprocess

import pytest

import vdisk
from vdisk.errors import NoSpace


@pytest.fixture
def tiny(tmp_path, request):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    size = request.param
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.decode().strip()}")
    try:
        yield str(mnt)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.parametrize("tiny", ["64k", "80k", "96k"], indirect=True)
def test_create_on_a_full_file_system_is_no_space(tiny):
    with pytest.raises(NoSpace):
        vdisk.Disk.create(os.path.join(tiny, "d.vdisk"), 1 << 30)
    assert os.listdir(tiny) == []
