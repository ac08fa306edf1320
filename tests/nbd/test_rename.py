"""``vdisk snapshot rename`` on a served disk: the export follows the name
(real clients: nbdinfo, libnbd), a snapshot with connected clients is not
renamed (EBUSY, exit 5), and no client slips in between the guard and the
rename (the plugin in process, as in test_guard_race.py)."""

from __future__ import annotations

import errno
import json
import subprocess

import pytest

from nbd_util import MiB, import_nbd, pattern, run_vdisk
from test_guard_race import _held, _in_thread, _open, plugin  # noqa: F401  (plugin: a fixture)
from vdisk import Disk
from vdisk.control.client import find_server
from vdisk.control.server import ControlServer
from vdisk.errors import AlreadyExists, Busy, NotFound


def _exports(s) -> set[str]:
    out = subprocess.run(["nbdinfo", "--list", "--json", s.uri()], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return {e["export-name"] for e in json.loads(out.stdout)["exports"]}


def test_the_export_follows_the_new_name(disk, serve):
    s = serve(disk)
    h = s.connect()
    h.pwrite(pattern(1, MiB), 0)
    h.flush()
    run_vdisk("snapshot", "create", disk, "before")
    h.pwrite(pattern(2, MiB), 0)
    assert _exports(s) == {"", "before"}
    # A client of the running point (or of another export) does not hold it.
    r = run_vdisk("snapshot", "rename", disk, "before", "release-1.0")
    assert r.stdout == "renamed snapshot before to release-1.0\n"
    assert _exports(s) == {"", "release-1.0"}
    snap = s.connect("release-1.0")
    assert bytes(snap.pread(MiB, 0)) == pattern(1, MiB)
    snap.shutdown()
    nbd = import_nbd()
    with pytest.raises(nbd.Error):
        s.connect("before")
    assert bytes(h.pread(MiB, 0)) == pattern(2, MiB)
    h.shutdown()
    listed = json.loads(run_vdisk("snapshot", "list", disk, "--json").stdout)
    assert [x["name"] for x in listed] == ["release-1.0"]


def test_a_snapshot_with_clients_is_not_renamed(disk, serve):
    run_vdisk("snapshot", "create", disk, "a")
    s = serve(disk)
    snap = s.connect("a")
    r = run_vdisk("snapshot", "rename", disk, "a", "b", check=False)
    assert r.returncode == 5, r.stderr
    assert "exported to 1 NBD connection(s); disconnect them before renaming it" in r.stderr
    assert _exports(s) == {"", "a"}
    assert len(bytes(snap.pread(4096, 0))) == 4096      # its client goes on
    snap.shutdown()
    del snap
    out = json.loads(run_vdisk("snapshot", "rename", disk, "a", "b", "--json").stdout)
    assert (out["name"], out["old_name"]) == ("b", "a")
    assert _exports(s) == {"", "b"}


def test_refusals_through_the_server_keep_their_codes(disk, serve):
    for name in ("a", "b"):
        run_vdisk("snapshot", "create", disk, name)
    serve(disk)
    for args, code, words in ((("nope", "x"), 3, "no snapshot named 'nope'"),
                              (("a", "b"), 4, "already exists"),
                              (("a", "x/y"), 2, "bad snapshot name"),
                              (("~a.1", "x"), 3, "no snapshot named")):
        r = run_vdisk("snapshot", "rename", disk, *args, check=False)
        assert r.returncode == code and words in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr


def test_no_connection_slips_in_between_guard_and_rename(plugin):  # noqa: F811
    reached, release = _held(plugin._state.disk, "rename_snapshot")

    def change():
        with find_server(plugin.path) as c:
            return c.rename_snapshot("s", "t")

    t, out = _in_thread(change)
    try:
        assert reached.wait(30), "the rename never reached the disk"
        # The guard has passed (no clients); the rename has not happened yet.
        with pytest.raises(plugin.ClientError):
            plugin.close(_open(plugin, "s", readonly=True))
        assert plugin.fake.errno == errno.ENOENT          # going away: as if already gone
    finally:
        release.set()
        t.join(30)
    assert "error" not in out, out.get("error")
    assert out["result"].name == "t"
    with pytest.raises(plugin.ClientError):
        _open(plugin, "s", readonly=True)
    assert plugin.fake.errno == errno.ENOENT
    h = _open(plugin, "t", readonly=True)
    assert bytes(h.dev.read(0, 1)) == b"s"
    # A connection opened first blocks the next rename, and nothing changes.
    with find_server(plugin.path) as c, pytest.raises(Busy, match="exported to 1 NBD connection"):
        c.rename_snapshot("t", "u")
    plugin.close(h)
    with find_server(plugin.path) as c:
        c.rename_snapshot("t", "u")
        assert [x.name for x in c.snapshots()] == ["u"]


def test_the_control_op_renames_and_reports_the_change(tmp_path):
    d = Disk.create(str(tmp_path / "c.vdisk"), 16 << 20)
    server = ControlServer(d, "test front end")
    seen = []
    server.on_change = lambda: seen.append([s.name for s in d.snapshots()])
    server.guard = lambda op, args: seen.append((op, dict(args))) and None
    server.start()
    try:
        with find_server(d.path) as c:
            c.create_snapshot("one")
            s = c.rename_snapshot("one", "two")
            assert (s.name, s.parent) == ("two", None)
            with pytest.raises(NotFound):
                c.rename_snapshot("one", "three")
            c.create_snapshot("one")
            with pytest.raises(AlreadyExists):
                c.rename_snapshot("one", "two")
            with pytest.raises(Exception, match="must be strings"):
                c.call("snapshot_rename", name="one", new_name=5)
            with pytest.raises(Exception, match="missing argument"):
                c.call("snapshot_rename", name="one")
    finally:
        server.close()
        d.close()
    assert ("snapshot_rename", {"name": "one", "new_name": "two"}) in seen
    assert ["two"] in seen      # on_change ran after the rename
