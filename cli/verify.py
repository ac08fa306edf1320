"""``vdisk verify``: check a disk's metadata, and with ``--data`` its blocks.

The work is :func:`vdisk.snapshots.verify.verify`; this module prints its
report. Exit status: 0 clean, 1 problems found; a disk that cannot be
opened exits with the code of the reason, as every command does (3 not
found, 2 not a disk, 8 damaged beyond reading, 9 newer format; see
:data:`vdisk.errors.EXIT_CODES`).
"""

from __future__ import annotations

import sys
from collections import Counter

import click

from vdisk.errors import EXIT_OK, EXIT_PROBLEMS, VdiskError, from_os_error

from .common import disk_argument, json_option, quiet_option, require_disk, resolve
from .failures import CommandFailed
from .progress import Progress


def summary_line(report) -> str:
    parts = [f"{report.trees} trees ({report.snapshots} snapshots)",
             f"{report.nodes_checked} nodes checked",
             f"{report.nodes_shared} shared subtrees accepted",
             f"{report.extents} extents",
             f"{report.blocks} blocks mapped"]
    if report.data_blocks:
        parts.append(f"{report.data_blocks} data blocks read")
    return f"{report.disk}: " + ", ".join(parts) + f" in {report.seconds:.2f} s"


def log_line(report) -> str | None:
    """The redo log's flushes beyond the committed maps verify checked, or None when there are none."""
    n, groups, dropped = report.log_flushes, report.log_groups, report.log_dropped_groups
    cut = f"a last flush that did not complete ({dropped} group{'s' if dropped != 1 else ''}) is dropped"
    if n:
        return (f"redo log: {n} flush{'es' if n != 1 else ''} ({groups} group{'s' if groups != 1 else ''}) "
                f"not yet committed to the maps; they are replayed when the disk is opened for writing"
                + (f", and {cut}" if dropped else ""))
    if dropped:
        return f"redo log: {cut} when the disk is opened for writing; every other flush is in the maps"
    return None


@click.command()
@disk_argument
@click.option("--data", is_flag=True, help="Also read every live block back and check its checksum.")
@quiet_option
@json_option
def verify(disk, data, quiet, as_json):
    """Check every snapshot, map and the allocator of DISK.

    Safe while the disk is in use: it reads one committed state of the
    metadata and never pauses the writer. Snapshots are walked oldest first
    and subtrees shared with an older one are not read again, so many
    snapshots cost little more than one. Each problem is one line naming the
    snapshot, node or extent and what is wrong. Flushes that the redo log
    holds and the maps do not yet (a writer beside it, or a crash) are one
    line, no problem: opening the disk for writing replays them. A progress
    bar is drawn on stderr when it is a terminal.

    Exit status: 0 clean, 1 problems found; a disk that cannot be opened
    gives the code of the reason (3 not found, 8 damaged, ...).

    Example: vdisk verify vm1.vdisk --data
    """
    from vdisk.snapshots.verify import verify as run_verify
    try:
        require_disk(disk)      # the same refusal as every command, before the verifier's own
        with Progress(quiet) as progress:
            report = run_verify(resolve(disk), data=data, progress=progress)
    except (VdiskError, OSError) as e:
        err = e if isinstance(e, VdiskError) else from_os_error(e)
        raise CommandFailed(f"cannot verify {disk}: {err}", err) from e
    if as_json:
        import json
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(summary_line(report))
        pending = log_line(report)
        if pending:
            click.echo(pending)
        for note in report.notes:
            click.echo(f"note: {note}")
        for p in report.problems:
            click.echo(f"{p.kind}: {p.where}: {p.what}")
        if report.ok:
            click.echo("no problems found")
        else:
            kinds = Counter(p.kind for p in report.problems)
            click.echo(f"{len(report.problems)} problem{'s' if len(report.problems) != 1 else ''} found ("
                       + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) + ")")
    sys.exit(EXIT_OK if report.ok else EXIT_PROBLEMS)
