"""Injected I/O faults: a clear error, then no successful flush over a lost write.

Faults come from lazyfs (lazyfs.py) under the disk: EIO and ENOSPC from
fsync/fdatasync (the file's dirty pages dropped, as Linux does, so that a
later fsync succeeds: the PostgreSQL failure of 2018), EIO, ENOSPC and
short counts from write, EIO from read, on the data file and on LMDB's
``meta/data.mdb``. Each case checks, through the API:

* the call that meets the fault raises a VdiskError of the kind the
  durability rule names (never a raw OSError or lmdb.Error);
* after a failed write-back or commit every later request raises
  DiskFailed (errno EIO, exit code 10) naming the cause, and close()
  releases the disk without raising; a pwrite ENOSPC fails only that write;
* after close, a power cut and a reopen, everything the last *successful*
  commit covered reads back, later writes read old or new, snapshots are
  unchanged, verify is clean (faults_driver.py holds the model).

A sweep puts one fault at the n-th write or fsync of any file of a random
workload (snapshots, deletions, reverts, compact included); one case runs
through ``vdisk serve``.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
from dataclasses import dataclass

import pytest

import powercut_model as pm
import powercut_serve
from faults_driver import Driver
from vdisk import Disk
from vdisk.errors import DiskFailed, NoSpace, StorageError, VdiskError
from vdisk.snapshots.verify import verify_open_disk

SIZE = 4 << 20
BS = 4096


@dataclass
class Case:
    id: str
    op: str
    path: str
    action: str
    trigger: str                   # "flush", "write", "read", "delete" or "commit" (a snapshot)
    error: type | None             # what the trigger raises (None: nothing)
    fails: bool | None             # the disk stops afterwards (None: either is fine)
    skip: int = 0
    count: int = 1


CASES = [
    # The reported failure: one EIO from fdatasync of DISK/data.
    Case("data-fdatasync-eio", "fsync", "*/data", "eio", "flush", StorageError, True),
    Case("data-fdatasync-enospc", "fsync", "*/data", "enospc", "flush", NoSpace, True),
    Case("data-pwrite-enospc", "write", "*/data", "enospc", "write", NoSpace, False),
    Case("data-pwrite-eio", "write", "*/data", "eio", "write", StorageError, None),
    Case("data-short-writes", "write", "*/data", "short", "write", None, False, count=0),
    # Persistent: the kernel retries a page whose readahead failed.
    Case("data-read-eio", "read", "*/data", "eio", "read", StorageError, None, count=0),
    # The metadata is written by full commits (a flush goes through the redo
    # log in the data file): a snapshot's creation is one.
    Case("meta-write-eio", "write", "*/meta/data.mdb", "eio", "commit", StorageError, True),
    # One ENOSPC: the commit is retried on the reserve's space (btree/store.py); two: stopped.
    Case("meta-write-enospc-once", "write", "*/meta/data.mdb", "enospc", "commit", None, False),
    Case("meta-write-enospc", "write", "*/meta/data.mdb", "enospc", "commit", NoSpace, True, count=2),
    Case("meta-short-write", "write", "*/meta/data.mdb", "short", "commit", StorageError, True),
    Case("meta-fsync-eio", "fsync", "*/meta/data.mdb", "eio", "commit", StorageError, True),
    # The second fsync of a commit is the meta page's (LMDB writes it O_DSYNC).
    Case("meta-page-fsync-eio", "fsync", "*/meta/data.mdb", "eio", "commit", StorageError, True, skip=1),
    # A full commit's fdatasync of the data (the flushes above go through the redo log).
    Case("commit-fdatasync-eio", "fsync", "*/data", "eio", "commit", StorageError, True),
    # A deletion's own fdatasyncs: its first commit, Disk.sync_data, its last commit.
    Case("delete-fdatasync-eio-0", "fsync", "*/data", "eio", "delete", StorageError, True),
    Case("delete-fdatasync-eio-1", "fsync", "*/data", "eio", "delete", StorageError, True, skip=1),
    Case("delete-fdatasync-eio-2", "fsync", "*/data", "eio", "delete", StorageError, True, skip=2),
]


def random_writes(rng, n, size=SIZE):
    ops = []
    for _ in range(n):
        off = rng.randrange(size // BS) * BS + rng.choice([0, 0, 1, BS // 2, BS - 1])
        ln = max(1, min(rng.choice([rng.randrange(1, BS), BS, rng.randrange(2, 17) * BS + 3]), size - off))
        ops.append(("write", off, ln, rng.getrandbits(48)))
    return ops


def setup(drv: Driver, rng):
    """Committed data, a snapshot, more committed data, acknowledged writes."""
    for op in [*random_writes(rng, 12), ("flush",), ("snap", "keep"), *random_writes(rng, 8),
               ("flush",), ("scatter", 100, 2, 64, rng.getrandbits(48)), ("snap", "gone"),
               ("scatter", 100, 4, 32, rng.getrandbits(48)), ("flush",), *random_writes(rng, 6)]:
        assert drv.run(op) is None, f"setup op {op[:3]} failed: {drv.errors or drv.raw}"


def reopen_and_check(lazyfs, path, drv: Driver, rng, fig, where):
    lazyfs.cut(keep=rng.choice([0.0, 0.5, 1.0]))
    fig["power_cuts"] += 1
    lazyfs.remount()
    try:
        d = Disk.open(path)
    except VdiskError as e:
        fig["losses"] += 1
        pytest.fail(f"the disk does not open after the fault and a cut: {type(e).__name__}: {e}; {where}")
    try:
        problems, lost = drv.check(d)
        fig["losses"] += lost
        fig["bytes_checked"] += SIZE * (1 + len(d.snapshots(exclusive=False)))
        fig["acknowledged_writes_checked"] += drv.acked_writes
        report = verify_open_disk(d)
        if not report.ok:
            problems.append("verify: " + "; ".join(map(str, report.problems[:5])))
    finally:
        d.close()
    assert not problems, f"{problems}; {where}"


def figures(fig):
    fig.update({k: fig.get(k, 0) for k in ("power_cuts", "faults_injected", "operations", "bytes_checked",
                                            "acknowledged_writes_checked", "losses")})


def assert_failed_state(d, first: VdiskError, where):
    """Every request of a stopped disk raises DiskFailed, naming the first error."""
    for name, call in [("read", lambda: d.read(0, BS)), ("write", lambda: d.write(0, b"x")),
                       ("flush", d.flush), ("trim", lambda: d.trim(0, BS)), ("zero", lambda: d.zero(0, BS)),
                       ("snapshot create", lambda: d.create_snapshot("later")),
                       ("snapshot delete", lambda: d.delete_snapshot("keep")),
                       ("revert", lambda: d.revert("keep")), ("flush again", d.flush)]:
        try:
            call()
        except DiskFailed as e:
            assert e.errno == errno.EIO and e.exit_code == 10 and e.cause, (name, e)
            continue
        except BaseException as e:
            pytest.fail(f"{name} on a stopped disk raised {type(e).__name__}: {e}, not DiskFailed; {where}")
        pytest.fail(f"{name} succeeded on a disk stopped by {first!r}: a later flush would hide "
                    f"lost writes; {where}")


def quiet_close(d):
    """Teardown after a failed check: release the disk whatever its state,
    so the file system can be unmounted."""
    try:
        d.close()
    except BaseException:
        pass


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fault(case, lazyfs, torture_figures):
    fig = torture_figures
    figures(fig)
    rng = random.Random(f"{case.id}-{os.environ.get('VDISK_TORTURE_SEED', '1')}")
    path = os.path.join(lazyfs.mountpoint, "f.vdisk")
    drv = Driver(Disk.create(path, SIZE, BS), SIZE, BS)
    try:
        run_case(case, lazyfs, drv, rng, fig, path)
    finally:
        quiet_close(drv.disk)


def run_case(case, lazyfs, drv, rng, fig, path):
    d = drv.disk
    setup(drv, rng)
    if case.trigger == "read":
        # Reads must reach the file system, not the kernel's page cache.
        d.close()
        lazyfs.sync()
        lazyfs.remount()
        d = drv.disk = Disk.open(path)
    rid = lazyfs.fault(case.op, case.path, case.action, skip=case.skip, count=case.count)
    where = f"case {case.id}"
    trigger = {"flush": [("flush",)], "write": random_writes(rng, 6), "delete": [("delete", "gone")],
               "read": [("read", 100 * BS, 64 * BS)], "commit": [("snap", "fault")]}[case.trigger]
    first = None
    for op in trigger:
        first = drv.run(op)
        if first is not None:
            break
    fig["operations"] += len(drv.errors) + len(trigger)
    assert not drv.raw, f"raw errors escaped the API: {drv.raw}; {where}"
    fired = lazyfs.fired(rid)
    fig["faults_injected"] += fired
    assert fired, f"the fault never fired; {where}"
    if case.error is None:
        assert first is None, f"{first!r}; {where}"
    else:
        assert isinstance(first, case.error) and not isinstance(first, DiskFailed), (
            f"the call that met the fault raised {first!r}, expected {case.error.__name__}; {where}")
    lazyfs.clear_faults()
    if case.fails:
        assert_failed_state(d, first, where)
    else:
        stopped = False
        for op in [*random_writes(rng, 4), ("flush",), ("snap", "after"), *random_writes(rng, 3), ("flush",)]:
            e = drv.run(op)
            fig["operations"] += 1
            if case.fails is False:
                assert e is None, f"{op[:3]} failed after a fault that must leave the disk usable: {e!r}; {where}"
            elif isinstance(e, DiskFailed) or stopped:
                stopped = True
                assert isinstance(e, DiskFailed), f"{op[:3]} raised {e!r} on a stopped disk; {where}"
        assert not drv.raw, f"raw errors escaped the API: {drv.raw}; {where}"
    try:
        d.close()
    except BaseException as e:
        pytest.fail(f"close() after the fault raised {type(e).__name__}: {e}; {where}")
    reopen_and_check(lazyfs, path, drv, rng, fig, where)


SWEEPS = [("write", "*", "enospc", 150), ("write", "*", "eio", 150), ("write", "*", "short", 150),
          ("fsync", "*", "eio", 30), ("fsync", "*", "enospc", 30)]
# The workload runs until the fault has fired and this many operations more.
AFTER_FAULT_OPS = 15
MAX_OPS = 250


@pytest.mark.parametrize("op,path,action,span", SWEEPS, ids=[f"{s[0]}-{s[2]}" for s in SWEEPS])
def test_fault_sweep(op, path, action, span, lazyfs, torture_budget, torture_figures):
    """One fault at the n-th write or fsync of any file (data or metadata)
    under a random workload with snapshots, deletions, reverts and compact;
    after it, the workload goes on as a client would. Then close, cut,
    reopen: nothing the last successful commit covered may be missing."""
    budget = torture_budget(3, 4, weight=0.2, suite_share=0.5)    # the suite version: 2 rounds
    fig = torture_figures
    figures(fig)
    fig.update(stopped=0, nospace=0)
    rng = random.Random(f"sweep-{op}-{action}-{budget.seed}")
    for rnd in budget.rounds():
        skip = rng.randrange(span)
        seed = budget.seed * 1000 + rnd
        path_ = os.path.join(lazyfs.mountpoint, f"w{rnd}.vdisk")
        drv = Driver(Disk.create(path_, SIZE, BS), SIZE, BS)
        where = f"fault {action} at {op} #{skip + 1} of any file, workload seed {seed} (base seed {budget.seed})"
        try:
            rid = lazyfs.fault(op, path, action, skip=skip, count=1)
            stopped = None
            ops = pm.operations(seed, SIZE, BS, [], big_delete=0.0)
            left = None
            for _ in range(MAX_OPS):
                if left is None and lazyfs.fired(rid):
                    left = AFTER_FAULT_OPS
                if left is not None:
                    if not left:
                        break
                    left -= 1
                o = next(ops)
                e = drv.run(o)
                fig["operations"] += 1
                if stopped is not None:
                    assert isinstance(e, DiskFailed), (
                        f"{o[:3]} after the disk stopped ({stopped!r}) gave {e!r}, not DiskFailed; {where}")
                elif isinstance(e, DiskFailed):
                    stopped = e
                elif e is not None:
                    fig["nospace"] += isinstance(e, NoSpace)
            assert not drv.raw, f"raw errors escaped the API: {drv.raw[:3]}; {where}"
            fired = lazyfs.fired(rid)
            fig["faults_injected"] += fired
            fig["stopped"] += stopped is not None
            lazyfs.clear_faults()
            try:
                drv.disk.close()
            except VdiskError as e:
                # A disk still running flushes on close; that flush may meet nothing now.
                pytest.fail(f"close() raised {e!r}; {where}")
            reopen_and_check(lazyfs, path_, drv, rng, fig, where)
        finally:
            quiet_close(drv.disk)
        shutil.rmtree(path_)          # long runs make hundreds of these
        lazyfs.sync()


def is_eio(e) -> bool:
    # libnbd's Error carries the errno's name (and its number as the second argument).
    return e.errno in ("EIO", errno.EIO)


def test_fdatasync_eio_through_serve(lazyfs, processes, torture_figures, tmp_path):
    """The reported failure through ``vdisk serve``: one EIO from fdatasync of
    DISK/data fails the client's NBD flush, and every later request fails
    too - no later flush succeeds over the writes the failed one lost. The
    server still stops cleanly; after a cut and a reopen, what the last
    successful flush covered is there."""
    lacking = powercut_serve.missing()
    if lacking:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"needs {', '.join(lacking)}")
    nbd = powercut_serve.import_nbd()
    fig = torture_figures
    figures(fig)
    rng = random.Random(7)
    path = os.path.join(lazyfs.mountpoint, "n.vdisk")
    Disk.create(path, SIZE, BS).close()
    lazyfs.sync()
    srv = powercut_serve.Server(path, str(tmp_path / "nbd.sock"), str(tmp_path / "serve.log"), processes)
    model = bytearray(SIZE)
    try:
        for op in random_writes(rng, 20):
            srv.apply(op, BS)
            model = pm.apply(op, model, {}, BS)
        srv.h.flush()
        allowed = pm.Allowed(bytes(model), BS)
        later = random_writes(rng, 10)
        for op in later:
            srv.apply(op, BS)
            model = pm.apply(op, model, {}, BS)
            allowed.add(model, pm.touched(op, BS, SIZE // BS))
        fig["operations"] += 31
        rid = lazyfs.fault("fsync", "*/data", "eio")
        with pytest.raises(nbd.Error) as first:
            srv.h.flush()
        assert is_eio(first.value), first.value
        fig["faults_injected"] += lazyfs.fired(rid)
        for name, call in [("flush", srv.h.flush), ("pwrite", lambda: srv.h.pwrite(b"y" * BS, 0)),
                           ("pread", lambda: srv.h.pread(BS, 0)), ("flush again", srv.h.flush)]:
            try:
                call()
            except nbd.Error as e:
                assert is_eio(e), (name, e)
                continue
            pytest.fail(f"NBD {name} succeeded after the failed flush: a later flush would hide lost writes")
        with pytest.raises(VdiskError):
            srv.control().create_snapshot("after")
        code = srv.stop()
        assert code is not None and code >= 0, f"vdisk serve was killed ({code}) instead of stopping"
    finally:
        if srv.proc.poll() is None:
            srv.kill()
    lazyfs.cut(keep=0.5)
    fig["power_cuts"] += 1
    lazyfs.remount()
    d = Disk.open(path)
    try:
        bad, _ = allowed.check(d.read(0, SIZE))
        fig["bytes_checked"] += SIZE
        fig["acknowledged_writes_checked"] += 20
        fig["losses"] += len(bad)
        assert not bad, f"{len(bad)} blocks lost that the last successful NBD flush covered: {bad[:8]}"
        report = verify_open_disk(d)
        assert report.ok, report.problems[:5]
    finally:
        d.close()
