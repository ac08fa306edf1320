"""The NBD plugin's delete/revert guard and the change it guards are one step
for new connections: a client that connects while the change is under way
is refused, never handed the export that is going away or changing.

The plugin runs in this process (nbdkit's module replaced by a stand-in), so
the control operation can be held between its guard and its act
deterministically: the disk's method is wrapped to stop and wait there.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import sys
import threading
import types

import pytest

from vdisk import Disk
from vdisk.control.client import find_server
from vdisk.errors import Busy
from vdisk.nbdplugin import PLUGIN, sitedir


class FakeNbdkit(types.ModuleType):
    """What plugin.py uses of nbdkit's module; records the errno it sets."""

    THREAD_MODEL_SERIALIZE_ALL_REQUESTS = 0
    FLAG_FUA = 1
    FLAG_MAY_TRIM = 2
    FLAG_FAST_ZERO = 4
    FLAG_REQ_ONE = 8
    FUA_NONE, FUA_NATIVE = 0, 2
    CACHE_NONE = 0
    EXTENT_HOLE, EXTENT_ZERO = 1, 2

    def __init__(self):
        super().__init__("nbdkit")
        self.export = ""
        self.errno = None

    def export_name(self):
        return self.export

    def set_error(self, code):
        self.errno = code


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """plugin.py loaded afresh and started on a disk with snapshot 's'."""
    path = str(tmp_path / "g.vdisk")
    with Disk.create(path, 4 << 20) as d:
        d.write(0, b"s" * 4096)
        d.create_snapshot("s")
    umask = os.umask(0o022)   # restored at the end: the plugin tightens it for its process
    os.umask(umask)
    fake = FakeNbdkit()
    monkeypatch.setitem(sys.modules, "nbdkit", fake)
    spec = importlib.util.spec_from_file_location("vdisk_plugin_under_test", PLUGIN)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.config("disk", path)
    mod.config("sitedir", sitedir())
    mod.config_complete()
    mod.after_fork()
    mod.fake = fake
    mod.path = path
    try:
        yield mod
    finally:
        mod.cleanup()
        os.umask(umask)


def _held(disk, method: str):
    """Wrap disk.METHOD so that the call stops before acting until released."""
    reached, release = threading.Event(), threading.Event()
    real = getattr(disk, method)

    def held(*args):
        reached.set()
        assert release.wait(30), "the test never released the held operation"
        return real(*args)

    setattr(disk, method, held)
    return reached, release


def _in_thread(fn):
    out = {}

    def run():
        try:
            out["result"] = fn()
        except BaseException as e:   # handed to the test thread
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def _open(plugin, export, readonly):
    plugin.fake.export = export
    plugin.fake.errno = None
    return plugin.open(readonly)


@pytest.mark.parametrize("op, export, code", [
    ("delete_snapshot", "s", errno.ENOENT),   # the export is going away: as if already gone
    ("revert", "", errno.EBUSY),              # the running point is changing: try again later
])
def test_no_connection_slips_in_between_guard_and_change(plugin, op, export, code):
    reached, release = _held(plugin._state.disk, op)
    call = {"delete_snapshot": lambda c: c.delete_snapshot("s"), "revert": lambda c: c.revert("s")}[op]

    def change():
        with find_server(plugin.path) as c:
            call(c)

    t, out = _in_thread(change)
    try:
        assert reached.wait(30), "the control operation never reached the disk"
        # The guard has passed (no clients); the change has not happened yet.
        with pytest.raises(plugin.ClientError):
            h = _open(plugin, export, readonly=True)
            plugin.close(h)
        assert plugin.fake.errno == code
    finally:
        release.set()
        t.join(30)
    assert "error" not in out, out.get("error")
    # Once the change is done the export behaves as it now is.
    if op == "revert":
        h = _open(plugin, "", readonly=False)
        plugin.close(h)
    else:
        with pytest.raises(plugin.ClientError):
            _open(plugin, "s", readonly=True)


def test_a_connection_opened_first_still_blocks_the_change(plugin):
    h = _open(plugin, "s", readonly=True)
    try:
        with find_server(plugin.path) as c, pytest.raises(Busy, match="exported to 1 NBD connection"):
            c.delete_snapshot("s")
    finally:
        plugin.close(h)
    with find_server(plugin.path) as c:
        c.delete_snapshot("s")


def test_an_open_that_fails_releases_its_claim(plugin):
    with pytest.raises(plugin.ClientError):
        _open(plugin, "missing", readonly=True)
    assert plugin.fake.errno == errno.ENOENT
    # A failed open counted as a user would block every later change of it.
    with find_server(plugin.path) as c:
        c.create_snapshot("missing")
        c.delete_snapshot("missing")
