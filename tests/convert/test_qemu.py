"""The qemu helpers (convert/qemu.py): a qemu-nbd export never outlives the
process that started it, and qemu's failures become one ImageError line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from vdisk.convert import qemu
from vdisk.errors import ImageError

from .util import MiB, qemu_img


@pytest.mark.parametrize("when", ["connected", "spawned"])
def test_qemu_nbd_never_outlives_a_killed_user(tmp_path, when):
    # qemu-nbd is socket-activated on a socket the parent is already connected
    # to, so a parent killed at any point - even right after spawning it,
    # before the NBD handshake - leaves a server whose one client is gone,
    # and it exits; no socket directory is left either.
    img = str(tmp_path / "a.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", img, str(MiB))
    child = f"""
import os, signal, sys
from vdisk.convert import qemu
if {when!r} == "spawned":
    real = qemu.Export._spawn
    def spawn_and_die(self, cmd):
        sock = real(self, cmd)
        print(self._proc.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    qemu.Export._spawn = spawn_and_die
e = qemu.Export({img!r}, "qcow2")
print(e._proc.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    before = set(os.listdir(tempfile.gettempdir()))
    r = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=30)
    assert r.returncode == -signal.SIGKILL, r.stderr
    pid = int(r.stdout.split()[0])
    deadline = time.monotonic() + 10
    while _alive(pid):
        assert time.monotonic() < deadline, "qemu-nbd outlived the process that started it"
        time.sleep(0.05)
    left = {n for n in set(os.listdir(tempfile.gettempdir())) - before if n.startswith("vdisk-qemu-nbd-")}
    assert not left


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_a_failing_qemu_nbd_is_one_image_error(tmp_path):
    bad = tmp_path / "bad.qcow2"
    bad.write_bytes(b"not an image" * 100)
    with pytest.raises(ImageError) as e:
        qemu.Export(str(bad), "qcow2")
    assert "\n" not in str(e.value) and "qcow2" in str(e.value)


def test_a_failing_qemu_img_is_one_image_error(tmp_path):
    with pytest.raises(ImageError) as e:
        qemu.qemu_img_json("info", str(tmp_path / "nope.qcow2"), what="nope.qcow2")
    assert str(e.value).startswith("nope.qcow2: ") and "\n" not in str(e.value)
