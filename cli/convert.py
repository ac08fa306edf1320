"""``vdisk convert``, ``import`` and ``export``: qemu images in and out."""

from __future__ import annotations

import contextlib
import logging
import os

import click

from vdisk.errors import Interrupted, InvalidArgument, VdiskError
from vdisk.units import format_size as describe_size

from .common import emit_json, is_rados, json_option, quiet_option, resolve
from .progress import Progress
from .sizes import SizeType

SOURCE_FORMATS = ("raw", "qcow2", "vmdk", "vhdx", "vpc", "vdi", "qed", "parallels")
PHASES = {"export": ("writing the image", "bytes")}


class _Bar(Progress):
    """Progress with the converter's numbered phases ("convert 2/5") in bytes.

    The verify pass reports each state as a phase of its own ("verify 2/5",
    0 then 1 of 1): drawn as one line of states compared, not a bar per
    state counting to one.
    """

    def __init__(self, quiet: bool):
        super().__init__(quiet, phases={**PHASES, "verify": ("verifying states", "states")})

    def __call__(self, phase, done, total):
        kind, _, count = phase.partition(" ")
        if kind == "verify" and count:
            number, _, states = count.partition("/")
            if number.isdigit() and states.isdigit():
                phase, done, total = "verify", int(number) - 1 + done // max(total, 1), int(states)
        if phase not in self.phases:
            kind, _, count = phase.partition(" ")
            label = {"convert": "converting state", "verify": "verifying state",
                     "layer": "writing layer"}.get(kind, kind)
            self.phases[phase] = (f"{label} {count}".strip(), "bytes" if kind != "verify" else "states")
        super().__call__(phase, done, total)


@contextlib.contextmanager
def _engine_log_in_the_error():
    """Keep the engine's log off stderr while a command runs, when nothing
    else is set up to take it.

    The engine logs a disk that stops (a full file system, an I/O error)
    for the long-running front ends, which keep logs; here the same failure
    reaches the user as the command's error, so Python's last-resort
    handler would print it twice, the first time without the way on.
    """
    log = logging.getLogger("vdisk")
    if log.hasHandlers():
        yield
        return
    quiet = logging.NullHandler()
    log.addHandler(quiet)
    try:
        yield
    finally:
        log.removeHandler(quiet)


def _resumable(disk: str, e: BaseException):
    """The error of a conversion that stopped after DISK was made: say how to go on."""
    hint = f"{disk} is left resumable: vdisk convert --resume {disk}"
    if isinstance(e, KeyboardInterrupt):
        return Interrupted(f"interrupted; {hint}")
    e.args = (f"{e}; {hint}",)
    return e


def _where(disk) -> str:
    """DISK as --json names it: an absolute path, or rados:POOL/NAME."""
    return str(disk) if is_rados(disk) else os.path.abspath(disk)


def _summary(s, as_json: bool, verb: str):
    if as_json:
        emit_json({"disk": _where(s.disk), "layers": s.layers, "snapshots": s.snapshots,
                   "read_bytes": s.read_bytes, "written_bytes": s.written_bytes, "zero_bytes": s.zero_bytes,
                   "unchanged_bytes": s.skipped_bytes, "hole_bytes": s.hole_bytes, "seconds": round(s.seconds, 3),
                   "verified_bytes": s.verified_bytes})
        return
    if not s.layers:
        click.echo(f"{s.disk}: nothing to convert; it is complete")
        return
    snaps = f"{len(s.snapshots)} snapshot{'s' if len(s.snapshots) != 1 else ''}"
    click.echo(f"{verb} {s.layers} layer{'s' if s.layers != 1 else ''} into {s.disk} ({snaps}) in "
               f"{s.seconds:.1f} s: read {describe_size(s.read_bytes)}, wrote {describe_size(s.written_bytes)}, "
               f"{describe_size(s.zero_bytes)} as zeros, {describe_size(s.hole_bytes)} of holes skipped" +
               (f", {describe_size(s.skipped_bytes)} unchanged" if s.skipped_bytes else "") +
               (f"; verified {describe_size(s.verified_bytes)}" if s.verified_bytes is not None else ""))


@click.command("convert")
@click.argument("paths", nargs=-1, metavar="SOURCE DISK")
@click.option("--names", help="Comma-separated names for the snapshots made, base first "
                              "(default: each layer's file name).")
@click.option("--format", "-f", "fmt", type=click.Choice(SOURCE_FORMATS),
              help="Format of SOURCE (default: qemu's probe; the layers below say theirs).")
@click.option("--verify", is_flag=True, help="Compare every snapshot and the running point with its source.")
@click.option("--resume", is_flag=True, help="Finish an interrupted conversion of DISK (give DISK only).")
@click.option("--online", is_flag=True, help="Prepare DISK at once and return; whoever serves or mounts it "
                                             "converts in the background while clients use it.")
@click.option("--rate", type=SizeType(), default=None, metavar="SIZE",
              help="With --online: convert at most SIZE bytes per second (e.g. 100M), so clients keep "
                   "most of the device.")
@click.option("--break-lock", is_flag=True,
              help="With --resume, a rados: disk whose converter died: fence it in the cluster and take "
                   "its lock over.")
@quiet_option
@json_option
def convert(paths, names, fmt, verify, resume, online, rate, break_lock, quiet, as_json):
    """Convert a qemu chain into a new DISK, layers as snapshots.

    SOURCE is the top image of a chain qemu reads (qcow2 backing chains,
    vmdk delta chains, a raw or qcow2 base). Base upward, each layer's own
    data goes into the disk and becomes a snapshot named after its file
    (internal qcow2 snapshots too); the top layer is the running point. Only
    the data the layers hold is copied. An interrupted conversion (Ctrl-C,
    a crash, a full disk) is finished with --resume.

    With --online, DISK is ready in seconds: serve or mount it and clients
    read the chain through it while the layers are converted behind them;
    their writes never enter a layer's snapshot (docs/CONVERT.md).

    DISK may be rados:POOL/NAME: the conversion's progress is a record of
    the disk, so --resume works from any host that has the source chain
    at the same paths; an online conversion is served from such a host.

    Example: vdisk convert vm1-top.qcow2 vm1.vdisk --verify
    """
    with _engine_log_in_the_error():
        _convert(paths, names, fmt, verify, resume, online, rate, break_lock, quiet, as_json)


def _convert(paths, names, fmt, verify, resume, online, rate, break_lock, quiet, as_json):
    from vdisk.convert import converter
    if break_lock and not resume:
        raise InvalidArgument("--break-lock takes over an interrupted conversion: it goes with --resume")
    if resume:
        if len(paths) != 1:
            raise InvalidArgument("convert --resume takes DISK only")
        if names or fmt:
            raise InvalidArgument("--names and --format belong to the start of a conversion, not --resume")
        if break_lock and not is_rados(paths[0]):
            raise InvalidArgument("--break-lock is for a rados:POOL/NAME disk (a local disk's lock goes when "
                                  "its holder dies)")
        with _Bar(quiet) as bar:
            summary = converter.resume(resolve(paths[0]), progress=bar, verify=verify, break_lock=break_lock)
        _summary(summary, as_json, "imported" if summary.imported else "converted")
        return
    if len(paths) != 2:
        raise InvalidArgument("convert takes SOURCE and DISK (or --resume DISK)")
    source, disk = paths
    name_list = [n.strip() for n in names.split(",")] if names is not None else None
    if rate is not None and not online:
        raise InvalidArgument("--rate paces an online conversion; it needs --online")
    if online:
        if verify:
            raise InvalidArgument("--verify runs once an online conversion is done: "
                                  "vdisk convert --resume DISK --verify")
        with converter.start(source, resolve(disk), names=name_list, fmt=fmt, online=True, rate=rate or 0) as d:
            rec = converter.progress_of(d)
        if as_json:
            emit_json({"disk": _where(disk), "source": source, "layers": len(rec.layers),
                       "states": len(rec.steps), "snapshots": [s.snapshot for s in rec.steps if s.snapshot],
                       "online": True})
        else:
            click.echo(f"prepared {disk} for online conversion of {source} ({len(rec.layers)} layers): serve or "
                       f"mount it (vdisk serve {disk}) and it converts in the background; vdisk info shows "
                       f"the progress")
        return
    _start_and_run(disk, verify, quiet, as_json, "converted", source=source, names=name_list, fmt=fmt)


def _start_and_run(disk, verify, quiet, as_json, verb, **start):
    """A new DISK from ``converter.start(**start)``, converted and (with
    ``verify``) compared; a failure after DISK exists says how to resume."""
    from vdisk.convert import converter
    d = converter.start(disk_path=resolve(disk), **start)
    try:
        with d, _Bar(quiet) as bar:
            rec = converter.progress_of(d)
            summary = converter.run(d, progress=bar)
    except (VdiskError, KeyboardInterrupt) as e:
        raise _resumable(disk, e) from None
    if verify:
        with converter.open_for_verify(resolve(disk)) as d, _Bar(quiet) as bar:
            summary.verified_bytes = converter.verify_states(d, rec, bar)
    _summary(summary, as_json, verb)


@click.command("import")
# Plain strings, as for convert: the converter checks them and says what is
# wrong in the same words and exit codes (an existing DISK is "already
# exists", exit 4, whatever it is).
@click.argument("source")
@click.argument("disk")
@click.option("--format", "-f", "fmt", type=click.Choice(SOURCE_FORMATS),
              help="Format of SOURCE (default: qemu's probe).")
@click.option("--verify", is_flag=True, help="Compare the new disk with SOURCE.")
@quiet_option
@json_option
def import_(source, disk, fmt, verify, quiet, as_json):
    """Make a new DISK from one image qemu reads.

    Holes and zeros are skipped. A chain is read as the one image it shows
    (flattened); to keep its layers as snapshots, use vdisk convert.

    Example: vdisk import vm1.qcow2 vm1.vdisk
    """
    with _engine_log_in_the_error():
        _import(source, disk, fmt, verify, quiet, as_json)


def _import(source, disk, fmt, verify, quiet, as_json):
    _start_and_run(disk, verify, quiet, as_json, "imported", source=source, fmt=fmt, flat=True)


@click.command("export")
@click.argument("disk", type=click.Path(file_okay=False))
@click.argument("out", type=click.Path())
@click.option("--snapshot", "-s", "snapshot", metavar="NAME", help="Export this snapshot (default: the running point).")
@click.option("-O", "--output-format", "fmt", type=click.Choice(("raw", "qcow2", "vmdk")), default="raw",
              show_default=True, help="Image format of OUT.")
@click.option("--chain", is_flag=True, help="OUT is a new directory: every snapshot as a qcow2 layer over "
                                            "its parent's, the running point on top (disk.qcow2).")
@click.option("--verify", is_flag=True, help="Compare what was written with the disk.")
@quiet_option
@json_option
def export(disk, out, snapshot, fmt, chain, verify, quiet, as_json):
    """Write DISK (or one snapshot) to an image file OUT, sparse.

    With --chain, OUT is a directory that holds the whole history as a qcow2
    backing chain: snapshots/NAME.qcow2 for each snapshot, each holding only
    what changed since its parent, and disk.qcow2 on top.

    Example: vdisk export vm1.vdisk vm1.qcow2 -O qcow2
    """
    with _engine_log_in_the_error():
        _export(disk, out, snapshot, fmt, chain, verify, quiet, as_json)


def _export(disk, out, snapshot, fmt, chain, verify, quiet, as_json):
    from vdisk.convert import export as ex
    from vdisk.container import require_container
    if is_rados(disk):
        disk = resolve(disk)
    else:
        require_container(disk)
    with _Bar(quiet) as bar:
        if chain:
            if snapshot is not None:
                raise InvalidArgument("--chain exports every snapshot; it takes no --snapshot")
            explicit = click.get_current_context().get_parameter_source("fmt") != \
                click.core.ParameterSource.DEFAULT
            if fmt != "qcow2" and explicit:
                raise InvalidArgument(f"--chain writes qcow2 (a backing chain needs it), not {fmt}")
            result = ex.export_chain(disk, out, verify=verify, progress=bar)
        else:
            result = ex.export_image(disk, out, snapshot=snapshot, fmt=fmt, verify=verify, progress=bar)
    if as_json:
        emit_json(result)
    elif chain:
        click.echo(f"exported {len(result['layers'])} layers to {out} in {result['seconds']:.1f} s "
                   f"(top: {os.path.join(out, 'disk.qcow2')})" + ("; verified" if verify else ""))
    else:
        click.echo(f"exported {snapshot or 'the running point'} to {out} ({fmt}, "
                   f"{describe_size(result['written_bytes'])} of data) in {result['seconds']:.1f} s" +
                   ("; verified" if verify else ""))
