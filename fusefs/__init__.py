"""FUSE front end: a disk's running point and snapshots as raw image files.

``vdisk mount DISK MOUNTPOINT`` (``vdisk.cli.mount``) runs
:func:`vdisk.fusefs.daemon.run`, which serves :class:`vdisk.fusefs.fs.VdiskFS`
with pyfuse3::

    MOUNTPOINT/disk.img              running point, read-write
    MOUNTPOINT/snapshots/NAME.img    snapshots, read-only

Modules: ``fs`` (the file system: thin calls into :class:`vdisk.Disk`),
``daemon`` (the mount process: open, mount, control socket, signals,
cleanup), ``mounttab`` (the kernel's mount table, stale mounts),
``lowlevel`` (fallocate and lseek, which pyfuse3 lacks). See docs/FUSE.md.
"""
