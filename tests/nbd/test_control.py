"""The ControlServer API that every front end (NBD, FUSE) uses, in process."""

from __future__ import annotations

import os
import socket
import stat
import threading

import pytest

from vdisk import Disk
from vdisk.control import protocol
from vdisk.control.client import ControlClient, find_server
from vdisk.control.server import ControlServer
from vdisk.errors import AlreadyExists, Busy, InvalidArgument, NotFound, ReadOnly


@pytest.fixture
def served(tmp_path):
    d = Disk.create(str(tmp_path / "c.vdisk"), 16 << 20)
    server = ControlServer(d, "test front end")
    changes = []
    server.on_change = lambda: changes.append(True)
    server.start()
    yield d, server, changes
    server.close()
    d.close()


def test_socket_is_owner_only_and_removed_on_close(served):
    d, server, _ = served
    st = os.lstat(server.path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert server.path == os.path.join(os.path.abspath(d.path), "control.sock")
    server.close()
    assert not os.path.exists(server.path)
    assert find_server(d.path) is None


def test_proxy_has_the_disk_methods_and_on_change_fires(served):
    d, server, changes = served
    d.write(0, b"a" * 4096)
    with find_server(d.path) as c:
        assert isinstance(c, ControlClient)
        assert c.hello["owner"] == "test front end" and c.hello["pid"] == os.getpid()
        s = c.create_snapshot("one")
        assert s.name == "one" and s.size == d.size
        d.write(0, b"b" * 4096)
        assert [x.name for x in c.snapshots()] == ["one"]
        assert c.snapshots()[0].exclusive_bytes == 4096
        assert c.info()["size"] == 16 << 20
        c.revert("one")
        assert d.read(0, 1) == b"a"
        c.resize(32 << 20)
        assert d.size == 32 << 20
        c.flush()
        c.delete_snapshot("one")
    assert len(changes) == 4    # create, revert, resize, delete


def test_errors_come_back_as_the_same_class_message_and_code(served):
    d, server, _ = served
    with find_server(d.path) as c:
        c.create_snapshot("x")
        for call, cls in ((lambda: c.create_snapshot("x"), AlreadyExists),
                          (lambda: c.delete_snapshot("y"), NotFound),
                          (lambda: c.resize(1024), InvalidArgument),
                          (lambda: c.create_snapshot("a/b"), InvalidArgument)):
            with pytest.raises(cls) as e:
                call()
            assert e.value.exit_code == cls.exit_code and str(e.value)
        assert c.call("hello")["version"] == protocol.VERSION   # the connection survived


def test_guard_can_refuse_a_change(served):
    d, server, changes = served

    def guard(op, args):
        if op == "snapshot_delete":
            raise Busy(f"{args['name']} is in use")

    server.guard = guard
    with find_server(d.path) as c:
        c.create_snapshot("kept")
        with pytest.raises(Busy, match="kept is in use"):
            c.delete_snapshot("kept")
        assert [s.name for s in c.snapshots()] == ["kept"]
    assert len(changes) == 1


def test_a_second_server_is_refused_and_a_stale_socket_replaced(served, tmp_path):
    d, server, _ = served
    with pytest.raises(Busy, match="already answers"):
        ControlServer(d, "second").start()
    server.close()
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(server.path)
    dead.close()
    assert find_server(d.path) is None          # stale: ignored
    again = ControlServer(d, "again")
    again.start()
    try:
        with find_server(d.path) as c:
            assert c.hello["owner"] == "again"
    finally:
        again.close()


def test_shutdown_needs_a_front_end_hook(served):
    d, server, _ = served
    with find_server(d.path) as c:
        with pytest.raises(InvalidArgument, match="cannot be shut down"):
            c.shutdown()
    called = threading.Event()
    server.on_shutdown = called.set
    with find_server(d.path) as c:
        c.shutdown()
    assert called.is_set()


def test_readonly_disk_reports_readonly_errors(tmp_path):
    path = str(tmp_path / "r.vdisk")
    Disk.create(path, 1 << 20).close()
    d = Disk.open(path, readonly=True)
    server = ControlServer(d, "ro")
    server.start()
    try:
        with find_server(path) as c:
            assert c.readonly
            with pytest.raises(ReadOnly):
                c.create_snapshot("nope")
    finally:
        server.close()
        d.close()


def test_long_disk_paths_work(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    d = Disk.create(str(deep / "long.vdisk"), 1 << 20)
    server = ControlServer(d, "deep")
    server.start()
    try:
        assert len(server.path) > 107
        with find_server(d.path) as c:
            assert c.create_snapshot("s").name == "s"
    finally:
        server.close()
        d.close()
    assert not os.path.exists(server.path)


def test_compact_runs_in_the_server(served):
    d, _server, _ = served
    d.write(0, b"x" * (64 * 4096))
    d.create_snapshot("a")
    for b in range(0, 64, 3):                 # scattered rewrites: a owns single blocks
        d.write(b * 4096, b"y" * 4096)
    d.create_snapshot("b")
    d.flush()
    with find_server(d.path) as c:
        c.delete_snapshot("a")
        before = c.info()["file_bytes"]
        returned = c.compact()
        assert returned > 0
        # ext4 counts its extent-tree blocks in st_blocks, and punching
        # holes can add one.
        assert before - returned <= c.info()["file_bytes"] <= before - returned + (64 << 10)
    assert d.read(0, 4096) == b"y" * 4096 and d.read(4096, 4096) == b"x" * 4096
