"""``vdisk serve`` as a process: exclusivity, stopping, the control socket
seen from the CLI, and bad input on every door."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import pytest

from nbd_util import MiB, Served, import_nbd, nbdkit_argv, nbdkit_env, pattern, run_vdisk

nbd = import_nbd()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_second_server_on_the_same_disk_is_refused(disk, serve):
    s = serve(disk)
    r = run_vdisk("serve", disk, "--socket", os.path.join(os.path.dirname(disk), "other.sock"), check=False)
    assert r.returncode == 5
    assert "already served by vdisk serve" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # nbdkit started by hand, past the CLI's check, is refused by the plugin itself.
    other = os.path.join(os.path.dirname(disk), "raw.sock")
    p = subprocess.run(nbdkit_argv(disk, other), env=nbdkit_env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == 5
    assert "is in use by PID" in p.stderr
    if os.path.exists(other):
        os.unlink(other)
    # The first server is unharmed.
    h = s.connect()
    h.pwrite(b"still here", 0)
    assert bytes(h.pread(10, 0)) == b"still here"
    h.shutdown()


def test_sigterm_with_a_client_attached_stops_promptly_and_keeps_every_write(disk, serve):
    s = serve(disk)
    h = s.connect()
    h.pwrite(pattern(3, 65536), 1 * MiB)      # acknowledged, never flushed by the client
    t0 = time.monotonic()
    assert s.stop() == 0
    assert time.monotonic() - t0 < 20
    assert not os.path.exists(s.socket)
    assert not os.path.exists(os.path.join(disk, "control.sock"))
    from vdisk import Disk
    with Disk.open(disk) as d:                 # the writer lock was released
        assert d.read(1 * MiB, 65536) == pattern(3, 65536)
    with pytest.raises(nbd.Error):
        h.pread(512, 0)                        # the server really went away


def test_sigint_without_clients_flushes_and_cleans_up(disk, serve):
    s = serve(disk)
    h = s.connect()
    h.pwrite(pattern(4, 4096), 0)
    h.shutdown()
    del h
    assert s.stop(signal.SIGINT) == 0
    assert "stopped serving" in s.stdout_rest
    assert run_vdisk("info", disk, "--json").returncode == 0
    from vdisk import Disk
    with Disk.open(disk, readonly=True) as d:
        assert d.read(0, 4096) == pattern(4, 4096)


def test_cli_commands_go_through_the_server(disk, serve):
    s = serve(disk)
    h = s.connect()
    h.pwrite(pattern(8, 8192), 0)
    created = run_vdisk("snapshot", "create", disk, "a").stdout
    assert created.strip() == "created snapshot a"
    h.pwrite(pattern(9, 8192), 0)
    info = json.loads(run_vdisk("info", disk, "--json").stdout)
    assert info["allocated_bytes"] == 8192 and [x["name"] for x in info["snapshots"]] == ["a"]
    # verify reads the committed state beside the writer (no control socket needed).
    run_vdisk("snapshot", "create", disk, "b")
    run_vdisk("snapshot", "delete", disk, "b")
    r = run_vdisk("verify", disk, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    listed = json.loads(run_vdisk("snapshot", "list", disk, "--json").stdout)
    assert listed[0]["name"] == "a" and listed[0]["exclusive_bytes"] == 8192
    # Refusals name the reason and leave everything as it was.
    r = run_vdisk("snapshot", "create", disk, "a", check=False)
    assert r.returncode == 4 and "already exists" in r.stderr
    r = run_vdisk("snapshot", "delete", disk, "nope", check=False)
    assert r.returncode == 3 and "no snapshot named 'nope'" in r.stderr
    r = run_vdisk("snapshot", "create", disk, "bad/name", check=False)
    assert r.returncode == 2 and "bad snapshot name" in r.stderr
    r = run_vdisk("snapshot", "revert", disk, "a", check=False)
    assert r.returncode == 5 and "disconnect them" in r.stderr
    snap = s.connect("a")
    r = run_vdisk("snapshot", "delete", disk, "a", check=False)
    assert r.returncode == 5 and "exported to 1 NBD connection" in r.stderr
    assert bytes(snap.pread(8192, 0)) == pattern(8, 8192)
    snap.shutdown()
    del snap
    h.shutdown()
    del h
    # With the clients gone, revert and resize work and new connections see them.
    run_vdisk("snapshot", "revert", disk, "a")
    run_vdisk("resize", disk, "128M")
    h = s.connect()
    assert h.get_size() == 128 * MiB
    assert bytes(h.pread(8192, 0)) == pattern(8, 8192)
    h.shutdown()
    del h
    assert "deleted snapshot a" in run_vdisk("snapshot", "delete", disk, "a").stdout


def test_readonly_server_beside_a_writer(disk, serve):
    run_vdisk("snapshot", "create", disk, "s0")
    s = serve(disk, "--readonly")
    assert "running point (read-only)" in s.banner[1]
    assert not os.path.exists(os.path.join(disk, "control.sock"))
    h = s.connect()
    assert h.is_read_only()
    # Without a control socket the CLI opens the disk itself - and may write.
    run_vdisk("snapshot", "create", disk, "s1")
    snap = s.connect("s1")
    assert snap.get_size() == 64 * MiB
    snap.shutdown()
    h.shutdown()


def test_tcp_on_loopback(disk, serve):
    port = _free_port()
    s = serve(disk, "--port", str(port))
    assert f"nbd://127.0.0.1:{port}/" in s.banner[1]
    h = nbd.NBD()
    h.connect_uri(f"nbd://127.0.0.1:{port}/")
    h.pwrite(b"tcp", 0)
    assert bytes(h.pread(3, 0)) == b"tcp"
    h.shutdown()


@pytest.mark.parametrize("args, code, message", [
    (["--bind", "127.0.0.1"], 2, "--bind needs --port"),
    (["--socket", "/tmp/x.sock", "--port", "10999"], 2, "exclude each other"),
    (["--socket", "/tmp/" + "x" * 120 + ".sock"], 2, "longer than the 107 bytes"),
    (["--socket", "/nonexistent-dir/x.sock"], 3, "does not exist"),
    (["--port", "0"], 2, "0 is not in the range"),
])
def test_bad_serve_arguments(disk, args, code, message):
    r = run_vdisk("serve", disk, *args, check=False)
    assert r.returncode == code, r.stderr
    assert message in r.stderr


def test_serving_what_is_not_a_disk(tmp_path):
    r = run_vdisk("serve", str(tmp_path / "missing"), check=False)
    assert r.returncode == 3 and "no disk at" in r.stderr
    r = run_vdisk("serve", str(tmp_path), check=False)
    assert r.returncode == 2 and "not a vdisk disk" in r.stderr


def test_a_socket_file_in_the_way_is_refused_or_replaced(disk, serve, tmp_path):
    blocker = tmp_path / "plain-file"
    blocker.write_text("x")
    r = run_vdisk("serve", disk, "--socket", str(blocker), check=False)
    assert r.returncode == 2 and "is not a socket" in r.stderr
    # A stale socket (nobody listening) from a killed server is replaced.
    stale = str(tmp_path / "stale.sock")
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(stale)
    dead.close()
    s = serve(disk, "--socket", stale)
    s.socket = stale
    h = nbd.NBD()
    h.connect_unix(stale)
    h.shutdown()


def test_killed_server_leaves_a_stale_control_socket_that_is_ignored(disk, serve):
    s = serve(disk)
    pid = int(s.banner[0].split("nbdkit PID ")[1].split(")")[0])
    os.kill(pid, signal.SIGKILL)
    s.proc.wait(timeout=30)
    control = os.path.join(disk, "control.sock")
    # vdisk serve cleans up after its nbdkit; recreate what a crash of both leaves.
    if not os.path.exists(control):
        dead = socket.socket(socket.AF_UNIX)
        dead.bind(control)
        dead.close()
    assert run_vdisk("snapshot", "create", disk, "after-crash").returncode == 0
    s2 = serve(disk)                      # replaces the stale socket
    assert "after-crash" in "\n".join(s2.banner)


def test_a_control_socket_owned_by_someone_else_is_not_used(disk):
    if os.getuid() != 0:
        pytest.skip("needs root to make a socket owned by another uid")
    control = os.path.join(disk, "control.sock")
    other = socket.socket(socket.AF_UNIX)
    other.bind(control)
    other.listen(1)
    os.chown(control, 4242, 4242)
    try:
        r = run_vdisk("info", disk, check=False)
        assert r.returncode == 5
        assert "belongs to uid 4242, not to you" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    finally:
        other.close()
        os.unlink(control)


def test_a_non_socket_at_the_control_path_is_reported(disk):
    with open(os.path.join(disk, "control.sock"), "w") as f:
        f.write("not a socket")
    r = run_vdisk("snapshot", "list", disk, check=False)
    assert r.returncode == 5 and "is not a socket" in r.stderr


def test_malformed_control_messages_get_errors_and_the_server_keeps_serving(disk, serve):
    s = serve(disk)
    c = socket.socket(socket.AF_UNIX)
    c.connect(os.path.join(disk, "control.sock"))
    f = c.makefile("rwb")

    def ask(raw: bytes) -> dict:
        f.write(raw + b"\n")
        f.flush()
        return json.loads(f.readline())

    bad = {
        b"not json": "ProtocolError",
        b"[1, 2]": "ProtocolError",
        b'{"v": 1, "op": "info"}': "ProtocolError",
        b'{"v": 99, "id": 1, "op": "info"}': "UnsupportedVersion",
        b'{"v": 1, "id": 2, "op": "format_disk"}': "ProtocolError",
        b'{"v": 1, "id": 3, "op": "resize", "args": {"size": "big"}}': "ProtocolError",
        b'{"v": 1, "id": 4, "op": "snapshot_create", "args": {}}': "ProtocolError",
        b'{"v": 1, "id": 5, "op": "snapshot_create", "args": {"name": "x", "force": true}}': "ProtocolError",
        b'{"v": 1, "id": 6, "op": "snapshot_delete", "args": {"name": "missing"}}': "NotFound",
        b'{"v": 1, "id": 7, "op": "resize", "args": {"size": 1024}}': "InvalidArgument",
        b'\xff\xfe': "ProtocolError",
    }
    for raw, cls in bad.items():
        reply = ask(raw)
        assert reply["ok"] is False and reply["error"]["class"] == cls, (raw, reply)
        assert reply["error"]["message"] and isinstance(reply["error"]["exit_code"], int)
    assert ask(b'{"v": 1, "id": 8, "op": "snapshot_create", "args": {"name": "x"}}')["result"]["name"] == "x"
    # An endless line is cut off with an error, and only that connection closes.
    try:
        c.sendall(b"x" * (2 << 20) + b"\n")
    except (BrokenPipeError, ConnectionResetError):
        pass   # the server replied and hung up before reading it all
    assert json.loads(f.readline())["error"]["class"] == "ProtocolError"
    c.close()
    assert "x" in run_vdisk("snapshot", "list", disk).stdout
    h = s.connect()
    h.pwrite(b"fine", 0)
    h.shutdown()


def test_served_banner_lists_every_export(disk, serve):
    run_vdisk("snapshot", "create", disk, "one")
    s = serve(disk)
    assert isinstance(s, Served)
    assert any(line.strip().startswith(f"nbd+unix:///one?socket={s.socket}") for line in s.banner)
