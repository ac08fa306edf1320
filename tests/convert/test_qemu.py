"""The qemu helpers (convert/qemu.py): a qemu-nbd export that is not yet
listening is waited for, and qemu's failures become one ImageError line."""

from __future__ import annotations

import os

import pytest

from vdisk.convert import qemu
from vdisk.errors import ImageError

from .util import MiB, qemu_img


def test_an_export_not_yet_listening_is_retried(tmp_path, monkeypatch):
    # qemu-nbd binds its socket before it listens: a connect in between is
    # refused, and the next try must work (it once raised AttributeError).
    nbd = qemu.load_nbd()
    img = str(tmp_path / "a.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", img, str(MiB))
    real = nbd.NBD.connect_unix
    calls = []

    def refused_once(self, sock):
        calls.append(sock)
        if len(calls) == 1:
            raise nbd.Error("Connection refused", 111)
        return real(self, sock)

    monkeypatch.setattr(nbd.NBD, "connect_unix", refused_once)
    with qemu.Export(img, "qcow2") as e:
        assert e.size == MiB and e.pread(4096, 0) == bytes(4096)
    assert len(calls) == 2
    assert not os.path.exists(os.path.dirname(calls[0]))      # its private directory is gone


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
