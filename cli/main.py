"""The ``vdisk`` command line: thin wrappers over :class:`vdisk.Disk`.

Each command opens the disk, calls one library function and prints the
result (text, or JSON with ``--json``; the schemas are in docs/CLI.md).
Every failure takes one path, :mod:`vdisk.cli.failures`: one line on stderr
and the exit code of :data:`vdisk.errors.EXIT_CODES`, never a traceback
unless ``--debug``. The commands live in modules by subject: ``disk``
(create, info, resize, compact, delete), ``snapshot``, ``serve``, ``mount``,
``verify``, ``replicate`` (diff, send, receive), ``completion``.
"""

from __future__ import annotations


import click

from vdisk import __version__

from . import failures
from .common import CEPH, VdiskGroup, help_when_bare


def _set_debug(ctx, param, value):
    if value:
        failures.STATE.debug = True


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group("vdisk", cls=VdiskGroup, context_settings=CONTEXT, invoke_without_command=True)
@click.version_option(__version__, "-V", "--version", prog_name="vdisk", message="%(prog)s %(version)s")
@click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
              help="Show the traceback of an error (for bug reports).")
@click.option("--ceph-conf", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
              help="Ceph configuration for rados:POOL/NAME disks (default: $CEPH_CONF, else Ceph's "
                   "search path: /etc/ceph/ceph.conf, ~/.ceph/config, ./ceph.conf).")
@click.option("--ceph-id", metavar="NAME", help="Ceph client name for rados: disks (client.NAME; default admin).")
@click.option("--ceph-timeout", type=click.FloatRange(1, 3600), default=30, show_default=True, metavar="SECONDS",
              help="Give up reaching the Ceph cluster after this long.")
@click.pass_context
def main(ctx, ceph_conf, ceph_id, ceph_timeout):
    """Virtual disks with instant, cheap snapshots.

    A disk is a directory holding copy-on-write B+tree metadata (LMDB) and a
    sparse data file. Serve it over NBD (vdisk serve) or mount it as image
    files (vdisk mount); snapshot, verify and compact it while it is in use.

    Errors are one line on stderr; exit codes and the --json schemas are in
    docs/CLI.md, a walk-through in docs/GUIDE.md.

    A disk can also live in a Ceph pool: rados:POOL/NAME wherever a
    command takes DISK (docs/RADOS.md).

    Example: vdisk create vm1.vdisk --size 10G
    """
    CEPH.conf, CEPH.client_id, CEPH.timeout = ceph_conf, ceph_id, ceph_timeout
    # One cluster connection per command: every look-up of a rados: disk
    # below shares it, and it is shut down when the command ends.
    from vdisk.location import hold_connections
    ctx.with_resource(hold_connections())
    help_when_bare(ctx)


def _register():
    from . import completion, convert, disk, mount, serve, snapshot, verify
    for cmd in (disk.create, disk.info, disk.resize, disk.compact, disk.delete, snapshot.snapshot, serve.serve,
                mount.mount, mount.umount, verify.verify, convert.convert, convert.import_, convert.export,
                completion.completion):
        main.add_command(cmd)
    from . import replicate
    for cmd in (replicate.diff, replicate.send, replicate.receive):
        main.add_command(cmd)


_register()


if __name__ == "__main__":
    main()
