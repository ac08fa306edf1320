"""``vdisk snapshot ...``: create, list, show, rename, delete and revert to snapshots.

Each works on a disk at rest or, through its control socket, on one that
``vdisk serve`` or ``vdisk mount`` holds (the server runs the work then, so
there is no progress bar and the server reports what it freed).
"""

from __future__ import annotations

import click

from vdisk.errors import NotFound, quote
from vdisk.units import describe_size, format_size

from .common import (VdiskGroup, disk_argument, emit_json, help_when_bare, is_local, json_option, local_time,
                     open_live, quiet_option, snapshot_argument, snapshot_json, table)
from .progress import Progress


@click.group(cls=VdiskGroup, invoke_without_command=True)
@click.pass_context
def snapshot(ctx):
    """Create, list, show, rename, delete and revert to snapshots.

    Names: 1 to 128 bytes of printable UTF-8, not starting with '-', '.' or
    a space, without '/' or '~'. Snapshots are instant and cost nothing
    until the disk changes.

    Example: vdisk snapshot create vm1.vdisk before-upgrade
    """
    help_when_bare(ctx)


@snapshot.command("create")
@disk_argument
@click.argument("name")
@json_option
def snapshot_create(disk, name, as_json):
    """Take a snapshot of every write so far (instant).

    Example: vdisk snapshot create vm1.vdisk before-upgrade
    """
    with open_live(disk) as d:
        s = d.create_snapshot(name)
    if as_json:
        emit_json(snapshot_json(s))
        return
    click.echo(f"created snapshot {s.name}")


@snapshot.command("list")
@disk_argument
@json_option
def snapshot_list(disk, as_json):
    """List snapshots, oldest first, with the space each holds alone.

    EXCLUSIVE is what deleting the snapshot would free; PARENT is the
    snapshot it was taken after ('-' for none).

    Example: vdisk snapshot list vm1.vdisk
    """
    with open_live(disk, readonly=True) as d:
        snaps = d.snapshots()
    if as_json:
        emit_json([snapshot_json(s) for s in snaps])
        return
    if not snaps:
        click.echo("no snapshots")
        return
    rows = [[s.name, local_time(s.created), format_size(s.size), format_size(s.exclusive_bytes), s.parent or "-"]
            for s in snaps]
    for line in table(["NAME", "CREATED", "SIZE", "EXCLUSIVE", "PARENT"], rows, right={2, 3}):
        click.echo(line)


@snapshot.command("info")
@disk_argument
@snapshot_argument
@json_option
def snapshot_info(disk, name, as_json):
    """Show one snapshot: its parent, children and space.

    Also when it was taken and the disk size then; --json for scripts.

    Example: vdisk snapshot info vm1.vdisk before-upgrade
    """
    from vdisk.disk import check_snapshot_lookup
    check_snapshot_lookup(name)
    with open_live(disk, readonly=True) as d:
        snaps = d.snapshots()
    found = [s for s in snaps if s.name == name]
    if not found:
        raise NotFound(f"no snapshot named {quote(name)} in {disk} (vdisk snapshot list {disk} lists them)")
    s = found[0]
    children = [c.name for c in snaps if c.parent == name]
    if as_json:
        emit_json({**snapshot_json(s), "children": children})
        return
    for label, value in [("name", s.name), ("created", local_time(s.created)),
                         ("size", describe_size(s.size)),
                         ("exclusive", f"{describe_size(s.exclusive_bytes)} (what deleting it frees)"),
                         ("parent", s.parent or "-"), ("children", ", ".join(children) or "-")]:
        click.echo(f"{label + ':':<11}{value}")


@snapshot.command("delete")
@disk_argument
@snapshot_argument
@quiet_option
@json_option
def snapshot_delete(disk, name, quiet, as_json):
    """Delete a snapshot and give back the space only it held.

    Runs in short batches while the disk stays in use, with a progress bar
    on stderr when it is a terminal. A snapshot that is the base of several
    others (after a revert) disappears at once; the space it holds alone
    returns when at most one of them is left.

    Example: vdisk snapshot delete vm1.vdisk nightly-2026-11-01
    """
    from vdisk.disk import check_snapshot_lookup
    check_snapshot_lookup(name)
    with open_live(disk) as d:
        held = {s.name: s.exclusive_bytes for s in d.snapshots()}
        if name not in held:
            raise NotFound(f"no snapshot named {quote(name)} in {disk} (vdisk snapshot list {disk} lists them)")
        if is_local(d):
            with Progress(quiet) as bar:
                freed = d.delete_snapshot(name, progress=bar) * d.block_size
        else:
            freed = d.delete_snapshot(name) * d.info()["block_size"]
    exclusive = held[name]
    # A deletion frees at least what the snapshot held alone when it began
    # (ownership only moves one way); less means it was kept as the hidden
    # base of its dependents.
    kept = max(0, exclusive - freed) if freed is not None else None
    if as_json:
        emit_json({"name": name, "exclusive_bytes": exclusive, "freed_bytes": freed,
                   "deferred": bool(kept), "still_held_bytes": kept})
        return
    if freed is None and not exclusive:
        click.echo(f"deleted snapshot {name}; it held no blocks alone")
    elif freed is None:
        click.echo(f"deleted snapshot {name}; the server frees the {describe_size(exclusive)} it held alone")
    elif kept:
        click.echo(f"deleted snapshot {name}; it is the base of other snapshots (after a revert), so the "
                   f"{describe_size(kept)} it holds alone return when at most one of them is left")
    else:
        click.echo(f"deleted snapshot {name}, freed {describe_size(freed)}")


@snapshot.command("rename")
@disk_argument
@snapshot_argument
@click.argument("new_name", metavar="NEW")
@json_option
def snapshot_rename(disk, name, new_name, as_json):
    """Give snapshot NAME the name NEW (instant).

    Only the name changes: its data, space and place among the others
    stay. NEW follows the rule of snapshot create. A served or mounted disk
    refuses while the snapshot's NBD export or NAME.img is in use.

    Example: vdisk snapshot rename vm1.vdisk before-upgrade release-1.0
    """
    with open_live(disk) as d:
        s = d.rename_snapshot(name, new_name)
    if as_json:
        emit_json({**snapshot_json(s), "old_name": name})
        return
    click.echo(f"renamed snapshot {name} to {s.name}")


def _revert(disk, name, as_json):
    with open_live(disk) as d:
        d.revert(name)
        size = d.info()["size"]
    if as_json:
        emit_json({"name": name, "size": size})
        return
    click.echo(f"reverted {disk} to snapshot {name} ({describe_size(size)})")


@snapshot.command("revert")
@disk_argument
@snapshot_argument
@json_option
def snapshot_revert(disk, name, as_json):
    """Make the disk read exactly as snapshot NAME.

    Writes made since the snapshot are dropped for good (take a snapshot
    first to keep them); the snapshot itself stays. Also called rollback.

    Example: vdisk snapshot revert vm1.vdisk before-upgrade
    """
    _revert(disk, name, as_json)


@snapshot.command("rollback")
@disk_argument
@snapshot_argument
@json_option
def snapshot_rollback(disk, name, as_json):
    """Same as revert (the name zfs and rbd use).

    Example: vdisk snapshot rollback vm1.vdisk before-upgrade
    """
    _revert(disk, name, as_json)
