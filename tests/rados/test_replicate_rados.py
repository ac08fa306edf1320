"""vdisk send and receive with a rados: disk on either end, against the real
cluster: a local disk's snapshots sent incrementally into a rados disk and
back out (the source's ids carried through the rados disk's records), a
receiver SIGKILLed mid-stream and resumed - on its own host, and on
"another host" (another hostname and local state directory), where a
receive whose staged records are not there is refused from where it
stood and starts over only from a whole stream - and a damaged stream
refused with the disk as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

import pytest

from cli.util import one_error_line, run, vdisk_cmd
from replicate.test_send_receive import MiB, boundaries, make_source, same_snapshot, stream_of
from replicate.util import kill_after_checkpoint
from vdisk import Disk
from vdisk.location import parse
from vdisk.replicate import receive as rx


@pytest.fixture
def rdisk(ceph, prefix):
    return f"rados:{ceph.pool}/{prefix}"


def vd(ceph, *args, input=None):
    return run("--ceph-conf", ceph.conf, *args, input=input)


def ok(r):
    assert r.exit_code == 0, (r.stdout, r.stderr)
    return r.stdout


def same_snapshots(a, b, names):
    for n in names:
        same_snapshot(a, b, n)


def test_snapshots_go_incrementally_into_a_rados_disk_and_back(ceph, rdisk, tmp_path):
    src, loc = str(tmp_path / "src"), parse(rdisk, conf=ceph.conf)
    make_source(src)
    base = None
    for name in ("s1", "s2", "s3"):
        f = tmp_path / f"{name}.stream"
        ok(vd(ceph, "send", src, name, *(["--from", base] if base else []), "-o", f))
        got = json.loads(ok(vd(ceph, "receive", rdisk, "-i", f, "--json")))
        assert (got["name"], got["base"], got["disk"], got["created_disk"]) == (name, base, rdisk, base is None)
        base = name
    same_snapshots(src, loc, ["s1", "s2", "s3"])
    assert "no problems found" in ok(vd(ceph, "verify", rdisk, "--data"))
    with Disk.open(loc, readonly=True) as d:
        # Nothing of a receive is left, and the source's ids are the disk's own record.
        assert d.extra_record("receive") is None and d.extra_record("received") is not None
        assert not os.path.exists(os.path.join(d.path, "receiving"))
    # And back out: a local replica of the rados one takes the source's
    # next incremental, so the ids came through the rados disk's record.
    back = str(tmp_path / "back")
    ok(vd(ceph, "send", rdisk, "s2", "-o", tmp_path / "b2.stream"))
    ok(vd(ceph, "receive", back, "-i", tmp_path / "b2.stream"))
    ok(vd(ceph, "send", src, "s3", "--from", "s2", "-o", tmp_path / "b3.stream"))
    ok(vd(ceph, "receive", back, "-i", tmp_path / "b3.stream"))
    # and the rados disk sends incrementals on too
    ok(vd(ceph, "send", rdisk, "s3", "--from", "s2", "-o", tmp_path / "r3.stream"))
    assert os.path.getsize(tmp_path / "r3.stream") < 2 * MiB
    same_snapshots(src, back, ["s2", "s3"])


def test_damaged_streams_leave_a_rados_disk_as_it_was(ceph, rdisk, tmp_path):
    src, loc = str(tmp_path / "src"), parse(rdisk, conf=ceph.conf)
    make_source(src)
    ok(vd(ceph, "receive", rdisk, input=stream_of(src, "s1")))
    with Disk.open(loc, readonly=True) as d:
        before = (d.read(0, d.size), [r.name for r in d.snapshot_records()], d.extra_record("received"))
    bad = bytearray(stream_of(src, "s2", "s1"))
    bad[boundaries(bytes(bad))[2] + 40] ^= 4
    one_error_line(vd(ceph, "receive", rdisk, input=bytes(bad)), 8, "record 3")
    with Disk.open(loc, readonly=True) as d:
        assert (d.read(0, d.size), [r.name for r in d.snapshot_records()], d.extra_record("received")) == before
        assert d.extra_record("receive") is None
        assert not os.listdir(os.path.join(d.path, "receiving")) if os.path.isdir(
            os.path.join(d.path, "receiving")) else True
    one_error_line(vd(ceph, "receive", rdisk, input=b""), 8, "ended")
    one_error_line(vd(ceph, "receive", rdisk, input=stream_of(src, "s1")), 4, "already has a snapshot")
    one_error_line(vd(ceph, "receive", rdisk, "--break-lock", "--resume-token"), 2, "--break-lock")
    one_error_line(vd(ceph, "receive", str(tmp_path / "local"), "--break-lock", input=b""), 2, "rados:POOL/NAME")
    # A damaged full stream into a disk the receive creates: vdisk cannot
    # remove a rados disk, so it is left empty, and takes the stream again.
    new = rdisk + "-new"
    bad = bytearray(stream_of(src, "s2"))
    bad[boundaries(bytes(bad))[3] + 40] ^= 4
    one_error_line(vd(ceph, "receive", new, input=bytes(bad)), 8, "damaged")
    with Disk.open(parse(new, conf=ceph.conf), readonly=True) as d:
        assert not d.snapshot_records() and d.allocated_bytes() == 0 and d.extra_record("receive") is None
    one_error_line(vd(ceph, "receive", rdisk + "-incr", input=stream_of(src, "s2", "s1")), 3, "no disk",
                   "incremental")
    ok(vd(ceph, "receive", new, input=stream_of(src, "s2")))
    same_snapshots(src, parse(new, conf=ceph.conf), ["s2"])


# ------------------------------------------------------------ killed and resumed

NAMESPACES = os.geteuid() == 0 and shutil.which("unshare") is not None
HOST_B = "host-b" if NAMESPACES else os.uname().nodename


def other_host(ceph, tmp, *args, input=None) -> subprocess.CompletedProcess:
    """``vdisk ARGS`` as if on another host: another local state directory
    and, where this runs as root, another hostname (a UTS namespace)."""
    env = {**os.environ, "XDG_RUNTIME_DIR": tmp}
    cmd = vdisk_cmd("--ceph-conf", ceph.conf, *args)
    if NAMESPACES:
        cmd = ["unshare", "--uts", "sh", "-c", f'hostname {HOST_B} && exec "$@"', "sh", *cmd]
    return subprocess.run(cmd, input=input, capture_output=True, env=env, timeout=120)


def text(r):
    r.stdout, r.stderr = r.stdout.decode(), r.stderr.decode()
    return r


def kill_mid_stream(ceph, rdisk, buf: bytes):
    """A receiver fed half of ``buf``, SIGKILLed once it checkpointed there;
    returns the resume token it left."""
    loc = parse(rdisk, conf=ceph.conf)
    p = subprocess.Popen(vdisk_cmd("--ceph-conf", ceph.conf, "receive", rdisk), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = {}

    def checkpointed():
        try:
            seen.update(rx.resume_token(loc))
        except Exception:           # the disk the receive creates may not exist yet
            return False
        return seen["offset"] > 0

    kill_after_checkpoint(p, buf, boundaries(buf), checkpointed, wait=30)
    assert 0 < seen["offset"] < seen["size"]
    return seen


@pytest.mark.parametrize("base", ["s1", None], ids=["incremental-staged", "full-into-new-disk"])
def test_a_receiver_killed_mid_stream_resumes_here_or_on_another_host(ceph, rdisk, tmp_path, base):
    src, loc = str(tmp_path / "src"), parse(rdisk, conf=ceph.conf)
    make_source(src)
    if base:
        ok(vd(ceph, "receive", rdisk, input=stream_of(src, "s1")))
    whole = stream_of(src, "s2", base)
    token = kill_mid_stream(ceph, rdisk, whole)
    with Disk.open(loc, readonly=True) as d:
        assert [r.name for r in d.snapshot_records()] == (["s1"] if base else [])
        spool = json.loads(d.extra_record("receive")).get("spool")
        state_dir = d.path
    # The dead receiver still holds the disk's lock: a receive says so, and
    # --break-lock takes it over.
    one_error_line(vd(ceph, "receive", rdisk, "--resume", input=whole), 5, "is in use")
    b_dir = tempfile.mkdtemp(prefix="host-b-", dir=os.environ["XDG_RUNTIME_DIR"])
    rest = stream_of(src, "s2", base, token=token["token"])
    if base is None:
        # Written straight onto the disk it created, position and data in
        # one commit: no local part, so another host resumes it from the token.
        assert spool is None
        r = text(other_host(ceph, b_dir, "receive", rdisk, "--resume-token"))
        assert r.returncode == 0 and r.stdout.strip() == token["token"], r.stderr
        r = text(other_host(ceph, b_dir, "receive", rdisk, "--resume", "--break-lock", input=rest))
        assert r.returncode == 0 and f"resumed at byte {token['offset']}" in r.stdout, r.stderr
    else:
        # Staged in this host's state directory: another host has not got
        # it, says where it is, and refuses to go on from where it stood...
        assert spool["dir"].startswith(state_dir) and os.path.exists(
            os.path.join(spool["dir"], f"ops.{spool['id']}"))
        r = text(other_host(ceph, b_dir, "receive", rdisk, "--resume-token"))
        one_error_line(r, 3, "not on this host", f"host {spool['host']}", spool["dir"])
        r = text(other_host(ceph, b_dir, "receive", rdisk, "--resume", "--break-lock", input=rest))
        one_error_line(r, 2, f"the stream starts at byte {token['offset']}", "not on this host")
        assert rx.resume_token(loc) == token        # nothing changed: this host can still resume it
        # ...but starts it over there from a whole stream (cut short here):
        # then the receive stands on host B, and this host is refused...
        r = text(other_host(ceph, b_dir, "receive", rdisk, "--resume", input=whole[:len(whole) // 3]))
        one_error_line(r, 8, "resume with")
        one_error_line(vd(ceph, "receive", rdisk, "--resume-token"), 3, "not on this host", f"host {HOST_B}")
        # ...and starts it over itself from a whole stream, to the end.
        out = ok(vd(ceph, "receive", rdisk, "--resume", input=whole))
        assert "resumed at byte" not in out
        # Its own first staged records, of a receive that went on elsewhere,
        # went at that writer's open.
        assert not os.path.exists(os.path.join(spool["dir"], f"ops.{spool['id']}"))
        one_error_line(vd(ceph, "receive", rdisk, "--abort"), 3, "no receive in progress")
    same_snapshots(src, loc, ["s2"])
    with Disk.open(loc, readonly=True) as d:
        assert d.extra_record("receive") is None
    assert "no problems found" in ok(vd(ceph, "verify", rdisk, "--data"))
    # An incremental on top, on this host again.
    ok(vd(ceph, "receive", rdisk, input=stream_of(src, "s3", "s2")))
    same_snapshots(src, loc, ["s3"])


def test_a_receiver_killed_mid_stream_resumes_on_its_host(ceph, rdisk, tmp_path):
    src, loc = str(tmp_path / "src"), parse(rdisk, conf=ceph.conf)
    make_source(src)
    ok(vd(ceph, "receive", rdisk, input=stream_of(src, "s1")))
    token = kill_mid_stream(ceph, rdisk, stream_of(src, "s2", "s1"))
    assert ok(vd(ceph, "receive", rdisk, "--resume-token")).strip() == token["token"]
    out = ok(vd(ceph, "receive", rdisk, "--resume", "--break-lock",
                input=stream_of(src, "s2", "s1", token=token["token"])))
    assert f"resumed at byte {token['offset']}" in out
    same_snapshots(src, loc, ["s1", "s2"])
    with Disk.open(loc, readonly=True) as d:
        assert not os.path.exists(os.path.join(d.path, "receiving"))
