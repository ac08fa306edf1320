"""vdisk convert and import into a rados: disk, against the real cluster:
a qcow2 chain made by qemu-img (an internal snapshot too) converted with
every layer a snapshot and --verify, qcow2 and vmdk images imported, a
conversion SIGKILLed after its first state and finished with --resume
--break-lock (the progress is the disk's own record), and an online
conversion, which reads through its chain: "another host" that lacks the
chain (its own hostname and mount namespace) reads the disk's records but
is refused going on, in one line naming the host that has it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from cli.util import vdisk_cmd
from convert.util import (MiB, build_chain, check_converted, image_info, info, missing_tools, ok, ok_json,
                          one_error_line, run, snapshot_names)
from vdisk import Disk
from vdisk.location import parse

CHILD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "convert", "convert_child.py")
HOST = os.uname().nodename

pytestmark = pytest.mark.skipif(bool(missing_tools()), reason=f"needs {', '.join(missing_tools())}")


@pytest.fixture
def rdisk(ceph, prefix, monkeypatch):
    # The conversion tests' helpers run `vdisk ...` without --ceph-conf: the
    # cluster comes from CEPH_CONF, here and in children.
    monkeypatch.setenv("CEPH_CONF", ceph.conf)
    return f"rados:{ceph.pool}/{prefix}"


def chain3(d):
    """base.qcow2 <- mid.qcow2 (an internal snapshot before its own writes) <- top.qcow2."""
    return build_chain(d, [
        {"name": "base.qcow2", "cmds": ["write -q -P 1 0 1M", "write -q -P 2 2M 512K"]},
        {"name": "mid.qcow2", "snapshots": {"early": ["write -q -P 3 64K 128K"]},
         "cmds": ["write -q -P 4 1M 256K", "write -q -z 2M 64K", "discard -q 0 64K"]},
        {"name": "top.qcow2", "cmds": ["write -q -P 5 3M 100K", "write -q -P 6 4095K 1K"]},
    ], size=4 * MiB, seed=11)


def test_a_qcow2_chain_converts_into_a_rados_disk_every_layer_a_snapshot(rdisk, tmp_path):
    ch = chain3(tmp_path)
    s = ok_json("convert", ch.top, rdisk, "--verify")
    assert s["disk"] == rdisk and s["snapshots"] == ch.names == ["base.qcow2", "mid.qcow2@early", "mid.qcow2"]
    assert s["verified_bytes"] > 0
    check_converted(rdisk, ch, tmp_path)
    conv = info(rdisk)["conversion"]
    assert conv["complete"] and conv["resume"] is None and not conv["source_in_use"]
    with Disk.open(parse(rdisk), readonly=True) as d:
        assert not os.listdir(d.path)           # nothing of it on this host
    one_error_line(run("convert", ch.top, rdisk), 4, "already exists")
    one_error_line(run("convert", tmp_path / "none.qcow2", rdisk + "-x"), 3, "none.qcow2")
    one_error_line(run("convert", "--resume", rdisk, "--break-lock", "--names", "a"), 2, "--names")
    one_error_line(run("convert", "--resume", tmp_path / "d.vdisk", "--break-lock"), 2, "rados:POOL/NAME")
    one_error_line(run("convert", ch.top, rdisk + "-y", "--break-lock"), 2, "--resume")
    assert "converted from" in ok("info", rdisk)


@pytest.mark.parametrize("fmt", ["qcow2", "vmdk"])
def test_import_into_a_rados_disk(rdisk, tmp_path, fmt):
    ch = build_chain(tmp_path, [{"name": f"one.{fmt}", "fmt": fmt,
                                 "cmds": ["write -q -P 7 0 300K", "write -q -z 1M 1M", "write -q -P 8 3M 4K"]}],
                     size=4 * MiB, seed=5)
    s = ok_json("import", ch.top, rdisk, "--verify")
    assert s["disk"] == rdisk and s["layers"] == 1 and s["snapshots"] == [] and s["verified_bytes"] > 0
    check_converted(rdisk, ch, tmp_path)
    with Disk.open(parse(rdisk), readonly=True) as d:
        assert d.size == image_info(ch.top, fmt)["virtual-size"]
        assert d.allocated_bytes() <= 304 * 1024 + 4096     # holes and zeros skipped


def test_a_conversion_killed_into_a_rados_disk_resumes_with_break_lock(rdisk, tmp_path):
    ch = chain3(tmp_path)
    r = subprocess.run([sys.executable, CHILD, "kill-after-state", "0", "convert", ch.top, rdisk],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == -9, r.stderr
    conv = info(rdisk)["conversion"]
    assert not conv["complete"] and conv["states_done"] == 1
    assert conv["resume"] == f"vdisk convert --resume {rdisk}"
    assert snapshot_names(rdisk) == ["base.qcow2"]
    # The killed converter still holds the lock; changing the disk is
    # refused until the conversion is finished.
    one_error_line(run("convert", "--resume", rdisk), 5, "is in use")
    one_error_line(run("snapshot", "create", rdisk, "x"), 5)
    s = ok_json("convert", "--resume", rdisk, "--break-lock", "--verify")
    assert s["disk"] == rdisk and s["verified_bytes"] > 0
    check_converted(rdisk, ch, tmp_path)


def elsewhere(*args, hide: str | None = None) -> subprocess.CompletedProcess:
    """``vdisk ARGS`` as on another host: hostname host-b, its own local
    state directory, and ``hide`` (the chain's folder) covered by an empty
    file system, as a host without the chain sees it."""
    mounts = f"mount -t tmpfs none {hide} && " if hide else ""
    cmd = ["unshare", "--uts", "--mount", "sh", "-c", f'hostname host-b && {mounts}exec "$@"', "sh",
           *vdisk_cmd(*args)]
    env = {**os.environ, "XDG_RUNTIME_DIR": os.path.join(os.environ["XDG_RUNTIME_DIR"], "host-b")}
    os.makedirs(env["XDG_RUNTIME_DIR"], exist_ok=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)


needs_namespaces = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                                      reason="another host is simulated with UTS and mount namespaces (root)")


@needs_namespaces
def test_an_online_conversion_goes_on_only_where_its_chain_is(rdisk, tmp_path):
    chain_dir = tmp_path / "chain"
    chain_dir.mkdir()
    ch = chain3(chain_dir)
    out = ok("convert", "--online", ch.top, rdisk)
    assert "prepared" in out and rdisk in out
    conv = info(rdisk)["conversion"]
    assert conv["online"] and not conv["complete"]
    # Another host without the chain reads the disk's records...
    r = elsewhere("info", rdisk, "--json", hide=chain_dir)
    assert r.returncode == 0 and '"online": true' in r.stdout, r.stderr
    # ...but cannot go on with it, nor read what is not converted yet.
    one_error_line(elsewhere("convert", "--resume", rdisk, hide=chain_dir), 3, "not on this host",
                   f"started on host {HOST}")
    one_error_line(elsewhere("serve", rdisk, hide=chain_dir), 3, "not on this host", "go on there")
    one_error_line(elsewhere("export", rdisk, tmp_path / "x.raw", hide=chain_dir), 5)
    # With the chain at the same paths (shared storage), another host goes on.
    r = elsewhere("convert", "--resume", rdisk, "--verify", "--json")
    assert r.returncode == 0 and '"verified_bytes"' in r.stdout, r.stderr
    check_converted(rdisk, ch, tmp_path)
    assert info(rdisk)["conversion"]["complete"]


@needs_namespaces
def test_an_offline_conversion_resumed_on_a_host_without_the_chain_is_refused(rdisk, tmp_path):
    chain_dir = tmp_path / "chain"
    chain_dir.mkdir()
    ch = chain3(chain_dir)
    r = subprocess.run([sys.executable, CHILD, "kill-after-state", "1", "convert", ch.top, rdisk],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == -9, r.stderr
    one_error_line(elsewhere("convert", "--resume", rdisk, "--break-lock", hide=chain_dir), 3,
                   "not on this host", f"started on host {HOST}", "base.qcow2")
    assert snapshot_names(rdisk) == ["base.qcow2", "mid.qcow2@early"]      # unchanged
    ok("convert", "--resume", rdisk)          # the refusal released the lock it took over
    check_converted(rdisk, ch, tmp_path)
