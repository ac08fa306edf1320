"""``vdisk verify``: check a disk's metadata, and with ``--data`` its blocks.

The work is :func:`vdisk.snapshots.verify.verify`; this module prints its
report. Exit status: 0 clean, 1 problems found, 2 the disk cannot be opened
(the codes of :mod:`vdisk.errors` do not apply here: ``verify`` promises
these three, as fsck-like tools do).
"""

from __future__ import annotations

import json
import sys
from collections import Counter

import click

from vdisk.errors import VdiskError

EXIT_CLEAN = 0
EXIT_PROBLEMS = 1
EXIT_CANNOT_OPEN = 2


class _Progress:
    """One click progress bar per phase, drawn on stderr."""

    LABELS = {"trees": "metadata trees", "data": "data blocks"}

    def __init__(self):
        self.bar = None
        self.phase = None
        self.done = 0

    def __call__(self, phase: str, done: int, total: int):
        if phase != self.phase:
            self.close()
            self.phase, self.done = phase, 0
            self.bar = click.progressbar(length=max(total, 1), label=self.LABELS.get(phase, phase),
                                         file=sys.stderr)
            self.bar.__enter__()
        self.bar.update(done - self.done)
        self.done = done

    def close(self):
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def summary_line(report) -> str:
    parts = [f"{report.trees} trees ({report.snapshots} snapshots)",
             f"{report.nodes_checked} nodes checked",
             f"{report.nodes_shared} shared subtrees accepted",
             f"{report.extents} extents",
             f"{report.blocks} blocks mapped"]
    if report.data_blocks:
        parts.append(f"{report.data_blocks} data blocks read")
    return f"{report.disk}: " + ", ".join(parts) + f" in {report.seconds:.2f} s"


@click.command()
@click.argument("disk", type=click.Path(file_okay=False))
@click.option("--data", is_flag=True, help="Also read every live block back and check its checksum.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify(disk, data, as_json):
    """Check that DISK is consistent: every snapshot, the maps, the allocator.

    Safe while the disk is in use: it reads one committed state of the
    metadata and never pauses the writer. Snapshots are walked oldest first
    and subtrees shared with an older one are not read again, so many
    snapshots cost little more than one. Each problem is one line naming the
    snapshot, node or extent and what is wrong.

    Exit status: 0 clean, 1 problems found, 2 the disk cannot be opened.

    Example: vdisk verify vm1.vdisk --data
    """
    from vdisk.snapshots.verify import verify as run_verify
    progress = _Progress() if sys.stdout.isatty() and sys.stderr.isatty() and not as_json else None
    try:
        report = run_verify(disk, data=data, progress=progress)
    except (VdiskError, OSError) as e:
        if progress is not None:
            progress.close()
        message = str(e) if isinstance(e, VdiskError) else f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}"
        click.echo(f"vdisk: error: cannot verify {disk}: {message}", err=True)
        sys.exit(EXIT_CANNOT_OPEN)
    if progress is not None:
        progress.close()
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(summary_line(report))
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
    sys.exit(EXIT_CLEAN if report.ok else EXIT_PROBLEMS)
