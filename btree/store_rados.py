"""The node store on RADOS: nodes in sharded omaps, commits through a journal.

Objects of a store named NAME (format version 1; docs/RADOS.md has the
byte tables and the cost model):

``NAME.header``
    omap: ``format`` (b"1"), ``commit`` and ``applied`` (16 lower-case hex
    digits, ASCII: omap_cmp compares strings), ``journal`` (the manifest of
    commit ``commit`` while it is being applied), ``last_node`` (hex: the
    highest node id ever put), and every meta record as ``m.<hex of key>``.
``NAME.nodes.<16 hex: node_id >> SHARD_SHIFT>``
    omap ``<16 hex node id>`` -> u64 LE commit number that wrote it + node.
``NAME.journal.<16 hex commit>.<4 hex part>``
    one commit's node puts and deletes, in parts under the OSD's write
    limit, each closed by a 16-byte blake3 of the rest.

A commit N (the writer holds N - 1 == commit == applied):

1. write the journal parts of N (write_full, in parallel);
2. one atomic WriteOp on the header: ``commit == N - 1`` asserted (and the
   writer's lock, see ``guard``); commit = N, the manifest, the meta
   changes. This op is the commit point: before it the store holds N - 1,
   after it N, whatever happens next;
3. apply the parts to the shards (aio, one op per shard and slice);
4. applied = N, manifest removed; the parts are deleted.

A writable open that finds ``applied < commit`` replays the journal (step 3
and 4 again: puts and deletes are idempotent). A reader pins a view with
:meth:`read_view`: the header's commit V, its meta records, and - while V
is not yet applied - V's journal as an overlay over the shards. A node
read in a view whose tag is above V was rewritten by a later commit: the
read raises IntegrityError, and since :meth:`current_view` has moved,
vdisk/reader.py retries the request in the newer view (as it does for
LMDB when a PBA was reused).

Every failure is a vdisk error: NoSpace for a full cluster or pool quota,
StorageError for the rest (a lost lock, a blocklisted client, a timeout),
IntegrityError for damage. After a failed commit the store refuses every
further commit until reopened: the outcome of the failed one is unknown
until a fresh open reads the header.

Removing a store (:func:`mark_removing`, then :func:`remove_store`): the
header is marked first, so nothing opens a half-removed store, and removed
last, since it is what finds the journal parts and shards; a removal cut
short is finished by running :func:`remove_store` again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import struct
import threading
from typing import Callable, Iterable

import blake3

from vdisk.errors import (Busy, IntegrityError, InvalidArgument, NoSpace, NotFound, ReadOnly, StorageError,
                          UnsupportedVersion)

FORMAT = b"1"
SHARD_SHIFT = 16                    # 65,536 node ids a shard: <= 256 MiB, well under 200k keys
PART_BYTES = 16 << 20               # a journal part: far under osd_max_write_size (90 MiB)
APPLY_BYTES = 8 << 20               # one shard WriteOp at most
_TAG = struct.Struct("<Q")
_PART_HEAD = struct.Struct("<4sHQHH")   # magic, version, commit, part, parts
_PUT, _DEL = 1, 2
_MAGIC = b"VRJN"


def _hex(n: int) -> str:
    return f"{n:016x}"


def encode_part(commit: int, part: int, parts: int, records: list[tuple[int, int, bytes]]) -> bytes:
    out = [_PART_HEAD.pack(_MAGIC, 1, commit, part, parts), struct.pack("<I", len(records))]
    for kind, node_id, data in records:
        out.append(struct.pack("<BQI", kind, node_id, len(data)))
        out.append(data)
    body = b"".join(out)
    return body + blake3.blake3(body).digest(16)


def decode_part(buf: bytes, commit: int, part: int) -> list[tuple[int, int, bytes]]:
    if len(buf) < _PART_HEAD.size + 20 or blake3.blake3(buf[:-16]).digest(16) != buf[-16:]:
        raise IntegrityError(f"journal part {part} of commit {commit} is damaged (checksum)")
    magic, version, c, p, _parts = _PART_HEAD.unpack_from(buf)
    if magic != _MAGIC or version != 1 or c != commit or p != part:
        raise IntegrityError(f"journal part {part} of commit {commit} is not that part "
                             f"({magic!r} v{version} commit {c} part {p})")
    (count,), pos, out = struct.unpack_from("<I", buf, _PART_HEAD.size), _PART_HEAD.size + 4, []
    for _ in range(count):
        kind, node_id, n = struct.unpack_from("<BQI", buf, pos)
        pos += 13
        out.append((kind, node_id, bytes(buf[pos:pos + n])))
        pos += n
    return out


class RadosNodeStore:
    """The :class:`vdisk.btree.store.NodeStore` of store ``name`` in ``ioctx``'s pool.

    ``guard(write_op)``, when given, is added to every commit's header
    operation: vdisk.ceph.lock_guard makes it assert the writer's lock, so a
    writer whose lock was broken cannot commit. ``ioctx`` stays the caller's.
    """

    def __init__(self, ioctx, name: str, readonly: bool = False, create: bool = True,
                 guard: Callable | None = None):
        import rados
        self._rados = rados
        self.ioctx, self.name, self.readonly, self.guard = ioctx, name, readonly, guard
        self.header = f"{name}.header"
        self._view = threading.local()
        self._failed: str | None = None
        self._meta_cache: tuple[int, dict[str, bytes]] | None = None
        self.crash_hook: Callable[[str], None] | None = None    # tests: called between steps
        keys = ("format", "commit", "applied", "journal", "last_node", REMOVING)
        head = self._header(keys, missing_ok=True)
        if head is None:
            if readonly or not create:
                raise IntegrityError(f"RADOS node store {name} does not exist")
            self._create()
            head = self._header(keys)
        if REMOVING in head:
            raise NotFound(f"RADOS node store {name} is being removed ({head[REMOVING].decode(errors='replace')})")
        if head.get("format") != FORMAT:
            raise UnsupportedVersion(f"RADOS node store {name} has format {head.get('format')!r}; "
                                     f"this vdisk reads {FORMAT!r}")
        self._commit, self._applied = int(head["commit"], 16), int(head["applied"], 16)
        self._last_node = int(head.get("last_node", b"0"), 16) if head.get("last_node") else None
        if not readonly and self._applied < self._commit:
            try:
                records = self._journal(self._commit, head.get("journal"))
            except _JournalGone:
                raise IntegrityError(f"RADOS node store {name}: a journal part of unapplied commit "
                                     f"{self._commit} is missing") from None
            self._apply(self._commit, records)       # a crash left it published, not applied
            self._finish(self._commit)
        if not readonly:
            # Parts a crash left: of the last finished commit (killed while
            # removing them) and of an attempt killed before it was published.
            self._sweep(self._commit)
            self._sweep(self._commit + 1)

    # ------------------------------------------------------------ errors, ops

    def _error(self, e: Exception, what: str):
        return _as_error(e, self.name, what)

    def _write(self, oid: str, build) -> None:
        op = self.ioctx.create_write_op()
        try:
            build(op)
            self.ioctx.operate_write_op(op, oid)
        finally:
            op.release()

    def _omap_read(self, oid: str, keys=None, prefix: str = "", max_return: int = 1 << 20):
        """One atomic omap read; None if the object does not exist."""
        op = self.ioctx.create_read_op()
        try:
            if keys is not None:
                it, _ = self.ioctx.get_omap_vals_by_keys(op, tuple(keys))
            else:
                it, _ = self.ioctx.get_omap_vals(op, "", prefix, max_return)
            self.ioctx.operate_read_op(op, oid)
            return {k: bytes(v) for k, v in it}
        except self._rados.ObjectNotFound:
            return None
        except self._rados.Error as e:
            raise self._error(e, f"reading {oid}") from None
        finally:
            op.release()

    def _header(self, keys, missing_ok: bool = False):
        got = self._omap_read(self.header, keys)
        if got is None and not missing_ok:
            raise IntegrityError(f"RADOS node store {self.name}: its header object is missing")
        return got

    def _create(self):
        def build(op):
            op.new(self._rados.LIBRADOS_CREATE_EXCLUSIVE)
            self.ioctx.set_omap(op, ("format", "commit", "applied"), (FORMAT, _hex(0).encode(), _hex(0).encode()))
        try:
            self._write(self.header, build)
        except self._rados.ObjectExists:
            pass                                     # created beside us: theirs is as good
        except self._rados.Error as e:
            raise self._error(e, "creating") from None

    def _shard(self, node_id: int) -> str:
        return f"{self.name}.nodes.{_hex(node_id >> SHARD_SHIFT)}"

    def _part_oid(self, commit: int, part: int) -> str:
        return _part_name(self.name, commit, part)

    # ------------------------------------------------------------ reads

    @contextlib.contextmanager
    def read_view(self):
        """Pin the committed state: yields its commit number (see the module doc)."""
        if getattr(self._view, "state", None) is not None:
            yield self._view.state[0]
            return
        self._view.state = self._pin()
        try:
            yield self._view.state[0]
        finally:
            self._view.state = None

    def _pin(self, tries: int = 8):
        for _ in range(tries):
            head = self._header(("commit", "applied", "journal"))
            commit = int(head["commit"], 16)
            meta = self._meta_snapshot(commit)
            if meta is None:
                continue                             # a commit landed between the two reads
            overlay = {}
            if int(head["applied"], 16) < commit:
                try:
                    overlay = {nid: (data if kind == _PUT else None)
                               for kind, nid, data in self._journal(commit, head.get("journal"))}
                except _JournalGone:
                    continue                         # applied meanwhile: the shards have it
            return commit, meta, overlay
        raise StorageError(f"RADOS node store {self.name}: no stable view after {tries} tries "
                           f"(commits are landing faster than a view can be pinned)")

    def _meta_snapshot(self, commit: int):
        cached = self._meta_cache
        if cached is not None and cached[0] == commit:
            return cached[1]
        got = self._omap_read(self.header, prefix="")
        if got is None or int(got["commit"], 16) != commit:
            return None
        meta = {k[2:]: v for k, v in got.items() if k.startswith("m.")}
        self._meta_cache = (commit, meta)
        return meta

    def current_view(self) -> int:
        return int(self._header(("commit",))["commit"], 16)

    def load(self, node_id):
        state = getattr(self._view, "state", None)
        if state is not None and node_id in state[2]:
            return state[2][node_id]
        got = self._omap_read(self._shard(node_id), (_hex(node_id),))
        buf = got.get(_hex(node_id)) if got else None
        if buf is None:
            if state is not None and self.current_view() != state[0]:
                # Deleted by a later commit, or never there: either way this
                # view cannot tell, and a newer one will.
                raise IntegrityError(f"node {node_id} is missing and the view {state[0]} has moved")
            return None
        (tag,) = _TAG.unpack_from(buf)
        if state is not None and tag > state[0]:
            raise IntegrityError(f"node {node_id} was rewritten by commit {tag} after view {state[0]} "
                                 f"was pinned")
        return buf[_TAG.size:]

    def meta_get(self, key):
        state = getattr(self._view, "state", None)
        if state is not None:
            return state[1].get(key.hex())
        got = self._header(("m." + key.hex(),))
        return got.get("m." + key.hex())

    def meta_items(self, prefix):
        state = getattr(self._view, "state", None)
        items = state[1] if state is not None else {
            k[2:]: v for k, v in (self._omap_read(self.header, prefix="m." + prefix.hex()) or {}).items()}
        return sorted((bytes.fromhex(k), v) for k, v in items.items() if k.startswith(prefix.hex()))

    def _shard_keys(self, shard: int) -> list[int]:
        out, after = [], ""
        oid = f"{self.name}.nodes.{_hex(shard)}"
        while True:
            op = self.ioctx.create_read_op()
            try:
                it, _ = self.ioctx.get_omap_keys(op, after, 10000)
                self.ioctx.operate_read_op(op, oid)
                keys = [k for k, _ in it]
            except self._rados.ObjectNotFound:
                return out
            except self._rados.Error as e:
                raise self._error(e, f"listing {oid}") from None
            finally:
                op.release()
            out.extend(int(k, 16) for k in keys)
            if len(keys) < 10000:
                return out
            after = keys[-1]

    def _top_shard(self) -> int:
        got = self._header(("last_node",))
        return int(got["last_node"], 16) >> SHARD_SHIFT if got.get("last_node") else -1

    def node_ids(self):
        return iter([i for shard in range(self._top_shard() + 1) for i in self._shard_keys(shard)])

    def last_node_id(self):
        for shard in range(self._top_shard(), -1, -1):
            keys = self._shard_keys(shard)
            if keys:
                return max(keys)
        return None

    # ------------------------------------------------------------ commit

    def _journal(self, commit: int, manifest: bytes | None) -> list[tuple[int, int, bytes]]:
        if not manifest:
            raise IntegrityError(f"RADOS node store {self.name}: commit {commit} is unapplied "
                                 f"but has no journal manifest")
        c, parts = struct.unpack("<QH", manifest)
        if c != commit:
            raise IntegrityError(f"RADOS node store {self.name}: the journal manifest is of commit {c}, "
                                 f"not {commit}")
        records = []
        for part in range(parts):
            try:
                buf = self.ioctx.read(self._part_oid(commit, part), PART_BYTES + (1 << 20))
            except self._rados.ObjectNotFound:
                raise _JournalGone() from None
            except self._rados.Error as e:
                raise self._error(e, f"reading the journal of commit {commit}") from None
            records.extend(decode_part(buf, commit, part))
        return records

    def _hook(self, step: str):
        if self.crash_hook is not None:
            self.crash_hook(step)

    def commit(self, puts, deletes, meta):
        if self.readonly:
            raise ReadOnly("metadata is open read-only")
        if self._failed:
            raise StorageError(f"RADOS node store {self.name} failed a commit earlier ({self._failed}); "
                               f"reopen the disk")
        n = self._commit + 1
        records = [(_PUT, i, puts[i]) for i in sorted(puts)] + [(_DEL, i, b"") for i in sorted(set(deletes))]
        try:
            parts = self._write_journal(n, records)
            self._hook("journal")
            self._publish(n, parts, puts, meta)
            self._commit = n
            self._hook("published")
            self._apply(n, records)
            self._hook("applied")
            self._finish(n, parts)
        except (StorageError, NoSpace, IntegrityError) as e:
            self._failed = str(e)
            raise
        except self._rados.Error as e:
            err = self._error(e, f"commit {n}")
            self._failed = str(err)
            raise err from None

    def _wait_all(self, comps, what: str):
        failed = None
        for oid, comp in comps:
            comp.wait_for_complete()
            rc = comp.get_return_value()
            if rc < 0 and failed is None:
                failed = (oid, rc)
        if failed is not None:
            raise self._error(OSError(-failed[1], f"{failed[0]}: error {-failed[1]}"), what)

    def _write_journal(self, n: int, records) -> int:
        chunks, cur, size = [], [], 0
        for r in records:
            if cur and size + len(r[2]) + 13 > PART_BYTES:
                chunks.append(cur)
                cur, size = [], 0
            cur.append(r)
            size += len(r[2]) + 13
        chunks.append(cur)
        if len(chunks) > 0xFFFF:
            raise NoSpace(f"commit {n} is too large for one journal ({len(chunks)} parts)")
        comps = [(oid, self.ioctx.aio_write_full(oid, encode_part(n, k, len(chunks), chunk)))
                 for k, chunk in enumerate(chunks) for oid in [self._part_oid(n, k)]]
        self._wait_all(comps, f"writing the journal of commit {n}")
        return len(chunks)

    def _publish(self, n: int, parts: int, puts, meta) -> None:
        keys = {"commit": _hex(n).encode(), "journal": struct.pack("<QH", n, parts)}
        top = max(puts, default=None)
        if top is not None and (self._last_node is None or top > self._last_node):
            keys["last_node"] = _hex(top).encode()
            self._last_node = top
        removes = []
        for k, v in meta.items():
            if v is None:
                removes.append("m." + k.hex())
            else:
                keys["m." + k.hex()] = bytes(v)

        def build(op):
            op.omap_cmp("commit", _hex(n - 1), self._rados.LIBRADOS_CMPXATTR_OP_EQ)
            if self.guard is not None:
                self.guard(op)
            self.ioctx.set_omap(op, tuple(keys), tuple(keys.values()))
            if removes:
                self.ioctx.remove_omap_keys(op, tuple(removes))
        try:
            self._write(self.header, build)
        except self._rados.Error as e:
            raise self._error(e, f"commit {n}") from None

    def _apply(self, n: int, records) -> None:
        by_shard: dict[str, list] = {}
        for kind, node_id, data in records:
            by_shard.setdefault(self._shard(node_id), []).append((kind, node_id, data))
        ops, comps = [], []
        tag = _TAG.pack(n)
        try:
            for oid, recs in by_shard.items():
                start = 0
                while start < len(recs):
                    end, size = start, 0
                    while end < len(recs) and (end == start or size + len(recs[end][2]) < APPLY_BYTES):
                        size += len(recs[end][2])
                        end += 1
                    sl = recs[start:end]
                    op = self.ioctx.create_write_op()
                    ops.append(op)
                    put = [(_hex(i), tag + d) for kind, i, d in sl if kind == _PUT]
                    dels = [_hex(i) for kind, i, _ in sl if kind == _DEL]
                    if put:
                        self.ioctx.set_omap(op, tuple(k for k, _ in put), tuple(v for _, v in put))
                    if dels:
                        self.ioctx.remove_omap_keys(op, tuple(dels))
                    comps.append((oid, self.ioctx.operate_aio_write_op(op, oid)))
                    start = end
            self._wait_all(comps, f"applying commit {n}")
        finally:
            for _, c in comps:
                c.wait_for_complete()
            for op in ops:
                op.release()

    def _finish(self, n: int, parts: int | None = None) -> None:
        if parts is None:
            parts = struct.unpack("<QH", self._header(("journal",))["journal"])[1]

        def build(op):
            op.omap_cmp("commit", _hex(n), self._rados.LIBRADOS_CMPXATTR_OP_EQ)
            if self.guard is not None:
                self.guard(op)
            self.ioctx.set_omap(op, ("applied",), (_hex(n).encode(),))
            self.ioctx.remove_omap_keys(op, ("journal",))
        try:
            self._write(self.header, build)
        except self._rados.Error as e:
            raise self._error(e, f"finishing commit {n}") from None
        self._applied = n
        # The parts are garbage now; what a crash leaves of them, the next
        # writable open sweeps.
        comps = [(oid, self.ioctx.aio_remove(oid)) for k in range(parts) for oid in [self._part_oid(n, k)]]
        for _, c in comps:
            c.wait_for_complete()

    def _sweep(self, n: int) -> None:
        _sweep_parts(self.ioctx, self.name, n)

    def sync(self):
        """Commits are durable when they return: only a failure is news."""
        if self._failed:
            raise StorageError(f"RADOS node store {self.name} failed a commit earlier ({self._failed})")

    def close(self):
        pass


class _JournalGone(Exception):
    """A journal part vanished under a reader: its commit was applied meanwhile."""


def _as_error(e: Exception, name: str, what: str):
    code = abs(getattr(e, "errno", None) or errno.EIO)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"{what}: the Ceph pool is full ({e})")
    why = {errno.ECANCELED: "another writer committed to it",
           errno.EBUSY: "this writer no longer holds its lock",
           errno.ESHUTDOWN: "this client was blocklisted (fenced) by another"}.get(code, str(e))
    return StorageError(f"{what} on RADOS node store {name}: {why}")


def _part_name(name: str, commit: int, part: int) -> str:
    return f"{name}.journal.{_hex(commit)}.{part:04x}"


def _sweep_parts(ioctx, name: str, n: int, window: int = 16) -> int:
    """Remove parts of commit ``n`` until ``window`` numbers in a row are missing; how many went.

    Parts are written in parallel, so a crash may leave any subset of
    them; a commit rarely has more than a few (16 MiB each), so a
    window of misses finds the rest without listing the pool.
    """
    part, removed = 0, 0
    while True:
        comps = [ioctx.aio_remove(_part_name(name, n, k)) for k in range(part, part + window)]
        for c in comps:
            c.wait_for_complete()
        gone = sum(c.get_return_value() == 0 for c in comps)
        if gone == 0:
            return removed
        removed += gone
        part += window


# ---------------------------------------------------------------- removing a store
#
# Removal is crash-safe by its order: mark_removing first (one atomic op on
# the header, so no open succeeds from then on: the constructor raises
# NotFound), then remove_store takes the journal parts and the node shards,
# and the header last. The header holds what finds the rest (``commit``,
# the manifest, ``last_node``), so a removal cut short anywhere is finished
# by running remove_store again.

REMOVING = "removing"               # header key: who began removing the store


@dataclasses.dataclass(frozen=True)
class HeaderState:
    """What a store's header says without opening the store (:func:`header_state`)."""

    commit: int
    removing: str | None            # who began removing it, or None


def header_state(ioctx, name: str) -> HeaderState | None:
    """The commit number and removal mark of store ``name``; None if it has no header."""
    got = _read_keys(ioctx, name, f"{name}.header", ("commit", REMOVING))
    if got is None:
        return None
    removing = got.get(REMOVING)
    return HeaderState(int(got["commit"], 16) if "commit" in got else 0,
                       removing.decode(errors="replace") if removing is not None else None)


def mark_removing(ioctx, name: str, who: str, guard: Callable | None = None) -> None:
    """Step 1 of removing store ``name``: one atomic op on its header marks it.

    ``guard(op)`` adds the writer's lock to the op (vdisk.ceph.lock_taker
    takes it, lock_guard asserts it held), so the mark lands only while no
    other writer holds the store: Busy otherwise. From then on nothing
    opens the store, and :func:`remove_store` removes it. NotFound if the
    store has no header.
    """
    import rados
    op = ioctx.create_write_op()
    try:
        op.omap_cmp("format", FORMAT.decode(), rados.LIBRADOS_CMPXATTR_OP_EQ)     # fails on no header
        if guard is not None:
            guard(op)
        ioctx.set_omap(op, (REMOVING,), (who.encode(),))
        ioctx.operate_write_op(op, f"{name}.header")
    except rados.ObjectNotFound:
        raise NotFound(f"RADOS node store {name} does not exist") from None
    except (rados.ObjectBusy, rados.ObjectExists):
        raise Busy(f"RADOS node store {name} is locked by another writer") from None
    except rados.Error as e:
        raise _as_error(e, name, "marking it for removal") from None
    finally:
        op.release()


def remove_store(ioctx, name: str, in_flight: int = 64) -> int:
    """Remove every object of store ``name``, which :func:`mark_removing` marked.

    The journal parts (of the manifest, and what a crash can leave: parts
    of the last commit and of the next one's attempt), the node shards up
    to the one of ``last_node``, then the header. Idempotent: after a crash
    or a failure, run it again to finish. Returns the objects removed.
    """
    import rados
    header = f"{name}.header"
    head = _read_keys(ioctx, name, header, ("commit", "journal", "last_node", REMOVING))
    if head is None:
        return 0
    if REMOVING not in head:
        raise InvalidArgument(f"RADOS node store {name} is not marked for removal (mark_removing first)")
    commit = int(head["commit"], 16) if "commit" in head else 0
    names = []
    if head.get("journal"):
        c, parts = struct.unpack("<QH", head["journal"])
        names += [_part_name(name, c, k) for k in range(parts)]
    if head.get("last_node"):
        names += [f"{name}.nodes.{_hex(shard)}" for shard in range((int(head["last_node"], 16) >> SHARD_SHIFT) + 1)]
    removed = 0
    for start in range(0, len(names), in_flight):
        comps = [(oid, ioctx.aio_remove(oid)) for oid in names[start:start + in_flight]]
        failed = None
        for oid, c in comps:
            c.wait_for_complete()
            rc = c.get_return_value()
            if rc == 0:
                removed += 1
            elif rc != -errno.ENOENT and failed is None:
                failed = OSError(-rc, f"{oid}: {os.strerror(-rc)}")
        if failed is not None:
            raise _as_error(failed, name, "removing its objects")
    try:
        removed += _sweep_parts(ioctx, name, commit) + _sweep_parts(ioctx, name, commit + 1)
        ioctx.remove_object(header)              # last: it is what finds the rest
        removed += 1
    except rados.ObjectNotFound:
        pass                                     # another removal finished it beside us
    except rados.Error as e:
        raise _as_error(e, name, "removing its header") from None
    return removed


def _read_keys(ioctx, name: str, oid: str, keys) -> dict[str, bytes] | None:
    import rados
    op = ioctx.create_read_op()
    try:
        it, _ = ioctx.get_omap_vals_by_keys(op, tuple(keys))
        ioctx.operate_read_op(op, oid)
        return {k: bytes(v) for k, v in it}
    except rados.ObjectNotFound:
        return None
    except rados.Error as e:
        raise _as_error(e, name, f"reading {oid}") from None
    finally:
        op.release()
