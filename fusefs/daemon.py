"""The mount process: open the disk, mount, serve FUSE requests, clean up.

:func:`run` is what ``vdisk mount`` runs, in the foreground or in the child
it starts. In order:

1. open the disk for writing (its writer lock makes a second mount, or a
   mount beside ``vdisk serve``, fail with "in use by PID N");
2. ``pyfuse3.init``: the kernel mount exists from here on, as
   ``fuse.vdisk`` with the disk's path as its source (see :mod:`.mounttab`);
3. add fallocate/lseek (:mod:`.lowlevel`), start the control server
   (``DISK/control.sock``, so ``vdisk snapshot ...`` works while mounted)
   and the kernel-notification thread - threads start only here, in the
   process that serves;
4. run pyfuse3's loop under trio; once a stat of ``disk.img`` has gone
   through it, the mount is ready and ``on_ready`` is called;
5. when the loop ends (``vdisk umount``/``fusermount3 -u``) or on SIGINT,
   SIGTERM or SIGHUP: stop the control server, unmount (lazily: a file still
   open fails with ENOTCONN from then on), then flush and close the disk.
   Every write acknowledged to a FUSE client is durable when ``run`` returns.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import pyfuse3
import trio

from vdisk.errors import VdiskError

from . import lowlevel, mounttab
from .fs import DISK_NAME, VdiskFS

log = logging.getLogger("vdisk.fusefs")

OWNER = "vdisk mount (FUSE)"
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def mount_options(disk_path: str, allow_other: bool) -> set[str]:
    # libfuse splits options at commas; a backslash escapes one.
    source = os.path.realpath(disk_path).replace("\\", "\\\\").replace(",", "\\,")
    opts = set(pyfuse3.default_options)       # default_permissions: the kernel checks modes
    opts |= {f"fsname={source}", f"subtype={mounttab.SUBTYPE}"}
    if allow_other:
        opts.add("allow_other")
    return opts


def run(disk_path, mountpoint: str, *, allow_other: bool = False, on_ready=None,
        debug: bool = False) -> None:
    """Mount ``disk_path`` (or a rados: location) at ``mountpoint`` and serve until unmounted or signalled.

    Engine errors before the mount (busy, not found) propagate unchanged;
    nothing is mounted then.
    """
    mountpoint = os.path.abspath(mountpoint)
    # What this process creates beside the disk (control socket, scratch
    # files of a deletion) is its owner's alone, whatever umask it came with.
    os.umask(0o077)
    # Signals wait until the loop can take them: one arriving while the
    # disk opens or during the final flush must not kill the process there.
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        _run(disk_path, mountpoint, allow_other, on_ready, debug)
    finally:
        # Signals that came after the loop have been served by this very
        # cleanup; do not let them kill the process now.
        while signal.sigtimedwait(SIGNALS, 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _run(disk_path, mountpoint, allow_other, on_ready, debug):
    from vdisk.convert.online import open_disk, start_background

    # An online conversion in progress gets its origin here, and carries on
    # once the mount is up (its snapshots then appear under snapshots/).
    disk = open_disk(disk_path, background=False)
    control = None
    fs = None
    mounted = False
    try:
        fs = VdiskFS(disk, mountpoint)
        opts = mount_options(disk.path, allow_other)     # a rados disk's: its local state directory
        if debug:
            opts.add("debug")
        try:
            pyfuse3.init(fs, mountpoint, opts)
        except RuntimeError as e:
            # libfuse has printed its reason (no /dev/fuse, allow_other not
            # permitted, ...) on stderr just before.
            raise VdiskError(f"cannot mount at {mountpoint}: {e} (libfuse's reason is above)") from None
        mounted = True
        why = lowlevel.install(fs.fallocate, fs.lseek)
        if why:
            log.warning("hole punching and SEEK_DATA/SEEK_HOLE are unavailable: %s", why)
        fs.start_notifier()
        control = control_server(disk, fs, mountpoint)
        control.start()
        start_background(disk, on_change=fs.refresh)
        trio.run(_serve, mountpoint, on_ready)
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            if control is not None:
                control.close()
            if fs is not None:
                fs.stop_notifier()
            if mounted:
                # Unmounts (lazily) unless the kernel has already done so.
                pyfuse3.close(unmount=True)
        finally:
            disk.close()


def control_server(disk, fs: VdiskFS, mountpoint: str):
    """The control server of a mount, wired to its file system (not started)."""
    from vdisk.control.server import ControlServer
    control = ControlServer(disk, owner=f"{OWNER} at {mountpoint}")
    control.on_change = fs.refresh
    control.guard = fs.guard
    # One control operation at a time, so the snapshot list is refreshed
    # after a deletion before a snapshot of the same name can be created
    # (see VdiskFS._pinned). FUSE requests do not wait for it.
    one_at_a_time = threading.Lock()
    control.exclusive = lambda: one_at_a_time
    return control


async def _serve(mountpoint: str, on_ready):
    async with trio.open_nursery() as nursery:
        await nursery.start(_stop_on_signal)
        nursery.start_soon(_announce_when_ready, mountpoint, on_ready)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _stop_on_signal(task_status=trio.TASK_STATUS_IGNORED):
    with trio.open_signal_receiver(*SIGNALS) as signals:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        task_status.started()
        async for signum in signals:
            log.info("%s: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


async def _announce_when_ready(mountpoint: str, on_ready):
    # The stat is answered by this very process's FUSE loop, so it must run
    # in another thread; once it returns, the kernel has finished FUSE_INIT
    # and the files are there for everyone.
    await trio.to_thread.run_sync(os.stat, os.path.join(mountpoint, DISK_NAME), abandon_on_cancel=True)
    if on_ready is not None:
        on_ready()
