"""A second writable line for online conversion, and the external origin.

While a redo-log chain is converted with the disk in use (design notes, 4;
``vdisk convert --online``), two writers share the container:

* clients write the **running point**, which knows nothing of the chain:
  the ranges it does not map yet are read from an **origin** - the chain's
  top image, which a layer above opens read-only and attaches
  (:meth:`attach_origin`; dm-thin's external origin);
* the converter writes the chain's layers, base up, into the **anchor**, a
  tree of its own (``anchor``), and takes each layer's snapshot of it
  (:meth:`anchor_snapshot`), so a snapshot holds exactly its layer and never
  a client write.

Ownership stays what the rest of the engine assumes - one line of
snapshots, each owning the VBAs born between its parent's watermark and its
own - because the two lines hand out VBAs from disjoint ranges: the anchor
below ``vba_limit``, which :meth:`begin_anchor` reserves for the whole
chain, and the running point from ``vba_limit`` up. So every client VBA is
born after the anchor's last snapshot. :meth:`finish_anchor` then merges,
in one commit: the running point's extents override the anchor's (the top
layer's blocks they replace are freed), the anchor becomes the running
point under the last layer's snapshot, and the origin is no longer used.

While the anchor exists the disk refuses what would break that picture:
snapshots of the running point, revert, delete, rename and resize. A trim
or zero of the running point writes zeros rather than unmapping, because an
unmapped range would show the origin again. Records: ``disk/anchor``
(:mod:`vdisk.format`). Mixed into :class:`vdisk.disk.Disk`.
"""

from __future__ import annotations

import time

from vdisk.errors import AlreadyExists, Busy, IntegrityError, InvalidArgument, NoSpace

from . import format as fmt
from .extents import MAX_TARGET, ExtentMap, unpack
from .names import ANCHOR_KEY, ANCHOR_TREE, RUNNING_TREE, SNAP_META_PREFIX, SNAP_TREE_PREFIX, validate_snapshot_name
from .reader import Reader
from .writes import Line, split_at_watermark


class AnchorView(Reader):
    """The anchor's contents (what the conversion has built so far), read-only."""

    def __init__(self, disk):
        self.disk = disk
        self.size = disk.size
        self.block_size = disk.block_size

    def _lba_map(self) -> ExtentMap:
        lba = self.disk._anchor_lba
        if lba is None:
            raise InvalidArgument(f"disk {self.disk.location} has no conversion anchor")
        return lba


class _MissingOrigin:
    """Stands for an origin nobody attached: only a read that needs it fails."""

    def __init__(self, location: str):
        self.location = location

    def read(self, offset: int, length: int) -> bytes:
        raise Busy(f"disk {self.location} is being converted online and its running point reads through "
                   f"the source chain, which is not open here: serve or mount the disk "
                   f"(or vdisk convert --resume) to use it")


class Anchor:
    """The anchor line and the origin, mixed into :class:`vdisk.disk.Disk`."""

    _anchor: fmt.AnchorRecord | None = None
    _anchor_lba: ExtentMap | None = None
    _origin = None

    def _load_anchor(self):
        buf = self.forest.meta_get(ANCHOR_KEY)
        if buf is None:
            if self.forest.has_tree(ANCHOR_TREE):
                raise IntegrityError(f"disk {self.location}: tree {ANCHOR_TREE!r} has no record; run vdisk verify")
            self._anchor = self._anchor_lba = None
            return
        self._anchor = fmt.decode_anchor(buf)
        if not self.forest.has_tree(ANCHOR_TREE):
            raise IntegrityError(f"disk {self.location}: the conversion anchor's tree is missing; run vdisk verify")
        self._anchor_lba = ExtentMap(self.forest.tree(ANCHOR_TREE))

    def _stage_anchor(self):
        """Called by each commit: the anchor's counters go with it."""
        if self._anchor is not None:
            self.forest.meta_put(ANCHOR_KEY, fmt.encode_anchor(self._anchor))

    def _check_anchor_counters(self, damaged):
        a = self._anchor
        if a is None:
            return
        if not 1 <= a.vba_watermark <= a.vba_next <= a.vba_limit <= self.state.vba_watermark:
            damaged(f"the conversion anchor's counters {a.vba_watermark} <= {a.vba_next} <= {a.vba_limit} "
                    f"<= {self.state.vba_watermark} do not hold")
        below = self._vba.tree.floor(a.vba_limit - 1)
        if below is not None and below[0] + unpack(below[1])[1] > a.vba_next:
            damaged(f"the anchor's next VBA {a.vba_next} is not past the mapped VBA {below[0]}")

    # ------------------------------------------------------------ state

    @property
    def converting(self) -> bool:
        """Whether an online conversion's anchor exists."""
        return self._anchor is not None

    def anchor_record(self) -> fmt.AnchorRecord | None:
        with self.view():
            return None if self._anchor is None else fmt.AnchorRecord(**vars(self._anchor))

    def check_not_converting(self, what: str):
        """Refuse ``what`` while an online conversion runs (see the module docstring)."""
        if self._anchor is not None:
            raise Busy(f"cannot {what}: disk {self.location} is being converted online; "
                       f"this works once the conversion is done (vdisk info shows its progress)")

    # ------------------------------------------------------------ the origin

    def attach_origin(self, origin) -> None:
        """Serve the running point's unmapped ranges from ``origin``
        (``.read(offset, length) -> bytes``, thread-safe) until the anchor is
        merged; the disk closes it (``.close()``, if it has one) at close()."""
        with self._lock:
            self._origin = origin

    def detach_origin(self):
        """Stop using the origin; returns it (for the caller to close)."""
        with self._lock:
            origin, self._origin = self._origin, None
            return origin

    def _close_origin(self):
        """At close: an attached origin belongs to the disk, so it is closed too."""
        origin, self._origin = self._origin, None
        close = getattr(origin, "close", None)
        if close is not None:
            close()

    def _origin_of_running_point(self):
        if self._anchor is None:
            return None
        return self._origin if self._origin is not None else _MissingOrigin(self.location)

    def _read_origin(self):
        return self._origin_of_running_point()

    def _line(self, which: str | None) -> Line:
        if which == ANCHOR_TREE:
            if self._anchor is None:
                raise InvalidArgument(f"disk {self.location} has no conversion anchor")
            return Line(self._anchor_lba, self._anchor, self._anchor.vba_limit, None)
        return super()._line(which)

    def _unmapping_shows_origin(self, which: str | None) -> bool:
        return which is None and self._anchor is not None

    # ------------------------------------------------------------ the anchor

    def begin_anchor(self, vba_reserve: int) -> None:
        """Start an online conversion on a new, empty disk: create the anchor
        with ``vba_reserve`` VBAs for the chain's layers, and commit."""
        self.check_writable()
        with self._settled():
            self._check_open()
            if self._anchor is not None:
                raise AlreadyExists(f"disk {self.location} already has a conversion anchor")
            if self.snapshot_records() or self._lba.tree.first() is not None:
                raise InvalidArgument(f"an online conversion needs a new, empty disk; {self.location} is not")
            st = self.state
            limit = st.vba_next + vba_reserve
            if limit >= MAX_TARGET // 2:
                raise NoSpace(f"the chain needs {vba_reserve} virtual block addresses, more than a disk "
                              f"can reserve; convert it offline")
            with self.changing():
                self.forest.create_tree(ANCHOR_TREE, self.forest.tree(RUNNING_TREE).layout)
                self._anchor = fmt.AnchorRecord(st.vba_next, st.vba_next, limit, None)
                self._anchor_lba = ExtentMap(self.forest.tree(ANCHOR_TREE))
                st.vba_next = st.vba_watermark = limit
                self._commit()

    def anchor_write(self, offset: int, data) -> None:
        self._write_to(ANCHOR_TREE, offset, data)

    def anchor_zero(self, offset: int, length: int) -> None:
        self._zero_to(ANCHOR_TREE, offset, length)

    def anchor_view(self) -> AnchorView:
        return AnchorView(self)

    def anchor_snapshot(self, name: str):
        """Freeze the anchor as snapshot ``name`` (a converted layer) and commit."""
        validate_snapshot_name(name)
        self.check_writable()
        with self._settled():
            self._check_open()
            a = self._anchor
            if a is None:
                raise InvalidArgument(f"disk {self.location} has no conversion anchor")
            key = SNAP_META_PREFIX + name.encode()
            if self.forest.meta_get(key) is not None:
                raise AlreadyExists(f"snapshot {name!r} already exists")
            with self.changing():
                self.forest.snapshot(ANCHOR_TREE, SNAP_TREE_PREFIX + name)
                rec = fmt.SnapshotRecord(name, time.time_ns(), self.forest.seq, a.vba_next, self.size, a.parent)
                self.forest.meta_put(key, fmt.encode_snapshot(rec))
                a.parent = name
                a.vba_watermark = a.vba_next
                self._commit()
            return self._info(rec)

    def finish_anchor(self):
        """Merge the running point into the anchor and make it the running point,
        in one commit; returns the origin, now unused (the caller closes it)."""
        self.check_writable()
        with self._settled():
            self._check_open()
            a = self._anchor
            if a is None:
                return self.detach_origin()
            with self.changing():
                alba, wm = self._anchor_lba, a.vba_watermark
                for s, vba, n in list(self._lba.extents()):
                    # A client write overrides the layers; what it replaces of
                    # the top layer (born after the last snapshot) is freed.
                    for _s, old, ln in split_at_watermark(alba.punch(s, n), wm):
                        if old >= wm:
                            self.forget_vbas(old, ln)
                    alba.map(s, vba, n)
                # No snapshot was ever taken of the running point while the
                # anchor existed, so every node of its tree is its alone.
                self.forest.free_node_ids(self._tree_node_ids(RUNNING_TREE))
                self.forest.drop_tree(RUNNING_TREE)
                self.forest.rename_tree(ANCHOR_TREE, RUNNING_TREE)
                self._lba = ExtentMap(self.forest.tree(RUNNING_TREE))
                st = self.state
                st.vba_watermark = a.vba_watermark
                st.parent = a.parent
                self.forest.meta_put(ANCHOR_KEY, None)
                self._anchor = self._anchor_lba = None
                self._commit()
            return self.detach_origin()

    def _tree_node_ids(self, name: str) -> list[int]:
        tree = self.forest.tree(name)
        ids, stack = [], [tree.root]
        while stack:
            node = self.forest.node(stack.pop())
            ids.append(node.id)
            if not node.leaf:
                stack.extend(node.vals)
        return ids
