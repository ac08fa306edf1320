"""``vdisk mount`` and ``vdisk umount``: a disk as image files through FUSE.

``vdisk mount DISK MOUNTPOINT`` starts the mount process (see
:mod:`vdisk.fusefs.daemon`) as a detached child - its own session, so the
terminal's Ctrl-C does not reach it - and returns once the mount answers.
The child tells it so over an inherited pipe (``--ready-fd``); until then its
stderr comes to this command, so a startup error is shown here as one line
with its exit code. From then on the child logs to ``DISK/mount.log``.
``--foreground`` serves in this process instead, until Ctrl-C or SIGTERM.

``vdisk umount MOUNTPOINT`` unmounts (fusermount3) and waits until the mount
process has flushed and released the disk, so the disk can be served or
mounted again as soon as it returns.

A mount whose process died (kill -9, a crash) is stale: the kernel answers
"Transport endpoint is not connected" until it is unmounted. ``vdisk mount``
of the same disk or onto the same mountpoint, and ``vdisk umount``, unmount
it and say so.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import select
import subprocess
import sys
import time

import click

from vdisk.errors import Busy, Interrupted, InvalidArgument, NotFound, VdiskError

from .common import CEPH, emit_json, is_rados, json_option, local_dir, require_disk, require_finished, resolve

LOG_NAME = "mount.log"
READY_TIMEOUT = 60.0
# The final flush of a big disk can take long; this is only a last resort.
STOP_TIMEOUT = 600.0
POLL = 0.05


def _note(message: str):
    click.echo(f"vdisk: {message}", err=True)


# ---------------------------------------------------------------- vdisk mount

@click.command()
@click.argument("disk", type=click.Path(file_okay=False))
@click.argument("mountpoint")
@click.option("--foreground", "-f", is_flag=True,
              help="Serve in this process until Ctrl-C, SIGTERM or vdisk umount (logs on stderr).")
@click.option("--allow-other", is_flag=True,
              help="Let other users reach the files (file modes still apply; root, or "
                   "user_allow_other in /etc/fuse.conf).")
@click.option("--mkdir", is_flag=True, help="Create MOUNTPOINT (and its parents) if it does not exist.")
@click.option("--debug-fuse", is_flag=True, help="Log every FUSE request (libfuse debug output).")
@click.option("--ready-fd", type=int, hidden=True)
@json_option
def mount(disk, mountpoint, foreground, allow_other, mkdir, debug_fuse, ready_fd, as_json):
    """Mount DISK at MOUNTPOINT as image files.

    MOUNTPOINT/disk.img is the running point (read-write) and
    MOUNTPOINT/snapshots/NAME.img each snapshot (read-only). Returns once
    the mount is ready; the mount process runs on until `vdisk umount
    MOUNTPOINT`. Snapshots taken or deleted while mounted appear and
    disappear under snapshots/. A disk cannot be mounted while it is served
    (vdisk serve) or mounted elsewhere.

    disk.img has the disk's fixed size, so it cannot be truncated: `cp` and
    shell `>` fail with EPERM. Copy an image in place instead:
    `dd if=IMG of=MOUNTPOINT/disk.img conv=notrunc,sparse bs=1M` or
    `qemu-img convert -n -O raw IMG MOUNTPOINT/disk.img`.

    Example: vdisk mount vm1.vdisk /mnt/vm1 --mkdir && qemu-img info /mnt/vm1/disk.img
    """
    if is_rados(disk):
        location = resolve(disk)
        path = local_dir(location)      # its sockets, log and mount source on this host
    else:
        location = path = os.path.abspath(disk)
    mp = os.path.abspath(mountpoint)
    _check(path, disk, mp, mkdir)
    if foreground or ready_fd is not None:
        _serve(path, mp, allow_other, debug_fuse, ready_fd, as_json, location=location)
    else:
        _start_child(path, disk, mp, allow_other, debug_fuse, as_json, location=location)


def _check(path: str, disk: str, mp: str, mkdir: bool = False):
    """Refuse early, with a clear message, what the mount would fail on."""
    from vdisk.fusefs import mounttab
    require_disk(disk)
    require_finished(disk)
    for m in mounttab.mounts_of_disk(path):
        if mounttab.is_stale(m.mountpoint):
            _clean_stale(m)
    m = mounttab.find(mp)
    if m is not None:
        if mounttab.is_stale(mp) and m.is_vdisk:
            _clean_stale(m)
        elif mounttab.is_stale(mp):
            raise Busy(f"{mp} is a stale {m.fstype} mount (not vdisk's); unmount it with fusermount3 -u -z {mp}")
        else:
            how = f"vdisk umount {mp}" if m.is_vdisk else f"umount {mp}"
            raise Busy(f"{mp} is already a mount point ({m.fstype} of {m.source}); unmount it first ({how})")
    if not os.path.exists(mp) and mkdir:
        os.makedirs(mp, exist_ok=True)
    if not os.path.exists(mp):
        raise NotFound(f"mount point {mp} does not exist; create it with mkdir, or add --mkdir")
    if not os.path.isdir(mp):
        raise InvalidArgument(f"mount point {mp} is not a directory")
    entries = os.listdir(mp)
    if entries:
        raise InvalidArgument(f"mount point {mp} is not empty ({len(entries)} entries would be hidden); "
                              f"use an empty directory")
    _refuse_if_held(path, disk)


def _refuse_if_held(path: str, disk: str):
    from vdisk.control.client import find_server
    live = find_server(path)
    if live is not None:
        with live:
            owner = live.owner
        raise Busy(f"cannot mount {disk}: it is held by {owner}; stop that first "
                   f"(a disk is mounted or served by one process at a time)")
    try:
        fd = os.open(os.path.join(path, "lock"), os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        raise Busy(f"cannot mount {disk}: it is in use by PID {pid} (vdisk serve, another vdisk mount, "
                   f"or a program using it); stop that first") from None
    finally:
        os.close(fd)   # releases the probe; the mount process takes the lock for real


def _clean_stale(m):
    from vdisk.fusefs import mounttab
    done, why = mounttab.unmount(m.mountpoint, lazy=True)
    if not done:
        raise Busy(f"{m.mountpoint} is a stale mount of {m.source} (its mount process died) and "
                   f"unmounting it failed: {why}")
    _note(f"cleaned up a stale mount of {m.source} at {m.mountpoint} (its mount process had died; "
          f"writes it had not flushed are lost)")


def _setup_logging(debug: bool):
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s vdisk mount[%(process)d]: %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    logging.getLogger("pyfuse3").setLevel(logging.DEBUG if debug else logging.WARNING)


def _serve(path: str, mp: str, allow_other: bool, debug: bool, ready_fd: int | None, as_json: bool = False,
           location=None):
    """The mount process: serve until unmounted or signalled."""
    import faulthandler
    from vdisk.fusefs import daemon
    faulthandler.enable()
    _setup_logging(debug)
    shown = path if location is None or isinstance(location, str) else str(location)

    def ready():
        if ready_fd is None:
            if as_json:
                click.echo(json.dumps({"event": "mounted", **_mounted_json(path, mp, os.getpid())}))
            else:
                click.echo(f"mounted {shown} at {mp}: {mp}/disk.img, {mp}/snapshots/; "
                           f"stop with Ctrl-C or vdisk umount {mp}")
            sys.stdout.flush()
            return
        # The log names files and errors of the disk: its owner's only, as
        # is a log left by an older version.
        log_fd = os.open(os.path.join(path, LOG_NAME), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(log_fd, 0o600)
        os.write(ready_fd, f"ready {os.getpid()}\n".encode())
        os.close(ready_fd)
        # The parent relays our stderr until it is closed; from now on, log.
        sys.stderr.flush()
        os.dup2(log_fd, 2)
        os.close(log_fd)
        logging.getLogger("vdisk.fusefs").info("mounted %s at %s", shown, mp)

    daemon.run(location if location is not None else path, mp, allow_other=allow_other, on_ready=ready,
               debug=debug)
    if ready_fd is None and as_json:
        click.echo(json.dumps({"event": "unmounted", "disk": path, "mountpoint": mp}))
    elif ready_fd is None:
        click.echo(f"unmounted {mp}; {shown} flushed and closed")
    else:
        logging.getLogger("vdisk.fusefs").info("unmounted %s; disk flushed and closed", mp)


def _mounted_json(path: str, mp: str, pid: int) -> dict:
    return {"disk": path, "mountpoint": mp, "pid": pid, "image": os.path.join(mp, "disk.img"),
            "snapshots": os.path.join(mp, "snapshots"), "log": os.path.join(path, LOG_NAME)}


def _start_child(path: str, disk: str, mp: str, allow_other: bool, debug: bool, as_json: bool = False,
                 location=None):
    r, w = os.pipe()
    ceph = []
    if is_rados(disk):
        ceph = ["--ceph-timeout", str(CEPH.timeout)]
        ceph += ["--ceph-conf", location.conf] if location.conf else []
        ceph += ["--ceph-id", location.client_id] if location.client_id else []
    argv = [sys.executable, "-m", "vdisk.cli.main", *ceph, "mount", "--ready-fd", str(w),
            str(location) if ceph else path, mp]
    if allow_other:
        argv.append("--allow-other")
    if debug:
        argv.append("--debug-fuse")
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, pass_fds=(w,), start_new_session=True)
    finally:
        os.close(w)
    try:
        pid = _wait_ready(proc, r)
    except KeyboardInterrupt:
        # Ctrl-C while waiting: the child is in its own session and would
        # mount anyway; stop it (it unmounts on SIGTERM if it got that far).
        proc.terminate()
        proc.wait(timeout=STOP_TIMEOUT)
        raise Interrupted("interrupted: the mount was not made") from None
    finally:
        os.close(r)
    if as_json:
        emit_json(_mounted_json(path, mp, pid))
        return
    click.echo(f"mounted {disk} at {mp} (mount process PID {pid}, log {os.path.join(path, LOG_NAME)})")
    click.echo(f"  {os.path.join(mp, 'disk.img')}  running point (read-write; copy an image in with "
               f"dd conv=notrunc, not cp)")
    click.echo(f"  {os.path.join(mp, 'snapshots')}/NAME.img  snapshots (read-only)")
    click.echo(f"unmount with: vdisk umount {mp}")


def _wait_ready(proc: subprocess.Popen, ready_r: int) -> int:
    """The child's PID once it is ready; its stderr is relayed meanwhile.

    If it exits first, its last words were the reason: relay them and exit
    with its code.
    """
    err_fd = proc.stderr.fileno()
    ready = b""
    deadline = time.monotonic() + READY_TIMEOUT
    open_fds = {ready_r, err_fd}
    while open_fds and time.monotonic() < deadline:
        readable, _, _ = select.select(list(open_fds), [], [], 0.5)
        for fd in readable:
            chunk = os.read(fd, 4096)
            if not chunk:
                open_fds.discard(fd)
            elif fd == err_fd:
                sys.stderr.buffer.write(chunk)
                sys.stderr.flush()
            else:
                ready += chunk
        if ready.endswith(b"\n"):
            # The child closes its end of our stderr pipe right after this
            # line; give what it wrote before a moment to arrive.
            deadline = min(deadline, time.monotonic() + 2)
    if ready.startswith(b"ready "):
        proc.stderr.close()
        return int(ready.split()[1])
    if time.monotonic() >= deadline:
        proc.terminate()      # it unmounts on SIGTERM if it got that far
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise VdiskError(f"the mount process did not become ready within {READY_TIMEOUT:.0f} s")
    code = proc.wait(timeout=30)
    sys.exit(code or 1)   # it already said why on the stderr relayed above


# ---------------------------------------------------------------- vdisk umount

@click.command()
@click.argument("mountpoint")
@click.option("--lazy", "-l", is_flag=True,
              help="Detach now even if files under MOUNTPOINT are open; the mount process flushes "
                   "and exits once the last one is closed.")
@json_option
def umount(mountpoint, lazy, as_json):
    """Unmount a vdisk mount: flush the disk and release it.

    Waits until the mount process has flushed and closed the disk. Cleans up
    a stale mount (its process died) and says so.

    Example: vdisk umount /mnt/vm1
    """
    from vdisk.fusefs import mounttab
    mp = os.path.abspath(mountpoint)
    m = mounttab.find(mp)
    if m is None:
        raise NotFound(f"{mp} is not mounted")
    if not m.is_vdisk:
        raise InvalidArgument(f"{mp} is a {m.fstype} mount, not a vdisk mount; use umount")
    if mounttab.is_stale(mp):
        done, why = mounttab.unmount(mp, lazy=True)
        if not done:
            raise Busy(f"{mp} is a stale mount (its mount process died); unmounting it failed: {why}")
        if as_json:
            emit_json({"mountpoint": mp, "disk": m.source, "stale": True, "lazy": True, "pid": None})
        else:
            click.echo(f"{mp} was a stale mount of {m.source}: its mount process had died; unmounted it "
                       f"(writes it had not flushed are lost)")
        return
    pid = _mount_pid(m.source)
    done, why = mounttab.unmount(mp, lazy=lazy)
    if not done:
        if "busy" in why.lower():
            raise Busy(f"{mp} is busy: a process has a file open under it (fuser -vm {mp} lists them); "
                       f"close them, or use --lazy")
        raise Busy(f"cannot unmount {mp}: {why}")
    if not lazy:
        _wait_released(m.source, pid)
    if as_json:
        emit_json({"mountpoint": mp, "disk": m.source, "stale": False, "lazy": lazy, "pid": pid})
    elif lazy:
        click.echo(f"detached {mp}; the mount process{f' (PID {pid})' if pid else ''} flushes {m.source} "
                   f"and exits once the last open file under it is closed")
    else:
        click.echo(f"unmounted {mp}; {m.source} flushed and closed")


def _mount_pid(disk_path: str) -> int | None:
    from vdisk.control.client import find_server
    try:
        live = find_server(disk_path)
    except VdiskError:
        return None
    if live is None:
        return None
    with live:
        return live.hello.get("pid")


def _wait_released(disk_path: str, pid: int | None):
    """Until the mount process has closed the disk (it flushes on the way)."""
    deadline = time.monotonic() + STOP_TIMEOUT
    told = False
    start = time.monotonic()
    while time.monotonic() < deadline:
        if _gone(pid) or _lock_free(disk_path):
            return
        if not told and time.monotonic() - start > 3:
            _note(f"waiting for the mount process{f' (PID {pid})' if pid else ''} to flush {disk_path}")
            told = True
        time.sleep(POLL)
    raise Busy(f"unmounted, but the mount process{f' (PID {pid})' if pid else ''} has not released "
               f"{disk_path} after {STOP_TIMEOUT:.0f} s")


def _gone(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True
    return state in ("Z", "X")


def _lock_free(disk_path: str) -> bool:
    try:
        fd = os.open(os.path.join(disk_path, "lock"), os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
