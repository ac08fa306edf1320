"""The data store: where the PBA space lives, and what the engine asks of it.

The engine (:mod:`vdisk.disk`) keeps its metadata in the node store
(:mod:`vdisk.btree`) and its blocks in a data store: a flat space of bytes,
block ``pba`` at byte ``pba * block_size``. The engine reaches that space
only through the :class:`DataStore` methods below, so the local sparse file
(:mod:`vdisk.datastore_file`), the in-memory twin for tests
(:mod:`vdisk.datastore_memory`) and a later store (a RADOS pool, a
fault-injecting layer) are interchangeable.

The commit protocol, which every store must let the engine honour:

1. **Data durable.** New data is only ever written to PBAs that the last
   commit holds free (live data is never overwritten in place). Before a
   commit, :meth:`DataStore.sync` makes every write made so far durable.
2. **Metadata committed atomically.** Then the node store commits every map
   change at once; after a crash it holds exactly one commit, whose PBAs
   all hold the data step 1 made durable.
3. **Released PBAs reusable only once durable.** A PBA released by a change
   enters the free map inside the commit that releases it, so the engine
   writes to it again only after that commit is durable. Before then a
   crash, or a reader pinned to the previous commit, still finds the old
   data there. :meth:`DataStore.punch` is only ever called on such PBAs.

What a store may raise: ``OSError`` only, with the errno that says what
happened (EIO, ENOSPC, ...); the engine maps it per the failure table of
docs/ARCHITECTURE.md ("Durability contract under failures"): a failed
``sync`` stops the disk, a failed ``write`` fails that write alone, a
failed read fails that read alone. A store must not retry a failed ``sync``
into a success: the engine relies on seeing the first failure, because
write-back that failed once may have dropped the data (Linux clears the
error with the dirty pages).

Reads past the end of the written space are short, as with ``pread``: the
engine tells a short read (a damaged store) from a failed one.

**Reads in flight.** :meth:`DataStore.read_many_into` takes a request's
reads together and may return before they are done (RADOS: many
``aio_read`` in flight); the engine waits for them outside its lock, so
other requests run meanwhile. What makes that safe is this rule, which
every store keeps: the bytes a :meth:`DataStore.read_many_into` leaves in
its buffers are those its ranges held when it was called. A ``write`` or
``punch`` called after it returned never changes them, even while the
reads are still on their way (a store with reads in flight makes an
overlapping write or punch wait for them). So a read that looked its PBAs
up under the engine's lock and issued them before releasing it cannot see
a PBA reused by a later commit: the reuse is a write, called later.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence


class DataStore(Protocol):
    """The PBA space: offsets and lengths in bytes."""

    def read(self, length: int, offset: int) -> bytes:
        """Up to ``length`` bytes at ``offset``: fewer only past the end."""

    def readinto(self, buf: memoryview, offset: int) -> int:
        """Fill ``buf`` from ``offset``; returns the bytes read (short past the end)."""

    def read_many_into(self, ranges: Sequence[tuple[int, int]],
                       views: Sequence[memoryview]) -> Callable[[], list[int]]:
        """Read every ``(length, offset)`` range at once, range ``i`` into ``views[i]``: one request's reads.

        Returns ``wait`` once the reads are taken (issued, or done):
        ``wait()`` gives the bytes each range got (short past the end), and
        may be called again with the same outcome; until it returns, the
        views' contents are undefined. A failure (OSError) is raised here
        or by ``wait()``. The module's rule holds: later writes and punches
        do not change what lands in the views. The engine reads a request's
        pieces straight into its caller's buffer so (issue 13: a 1 MiB NBD
        read into nbdkit's, with no bytes joined or copied).
        """

    def write(self, data: memoryview, offset: int) -> None:
        """Write all of ``data`` at ``offset`` (not durable until :meth:`sync`)."""

    def start_writeback(self, offset: int, length: int) -> None:
        """Start making a written range durable without waiting; a hint.

        Lets a later :meth:`sync` find most of a large write already on its
        way. Raises only when it learned that written data may be lost
        (EIO): the write that called it then fails.
        """

    def sync(self) -> None:
        """Make every write so far durable (step 1 of the commit protocol)."""

    def punch(self, offset: int, length: int) -> bool:
        """Give a free range's space back (it reads as zeros); False if unsupported."""

    def seek_data(self, offset: int) -> int | None:
        """The first byte at or after ``offset`` that may hold data; None if none."""

    def seek_hole(self, offset: int) -> int:
        """The first byte at or after ``offset`` of a hole (the end counts as one)."""

    def size(self) -> int:
        """Bytes from 0 to the end of the highest write."""

    def allocated_bytes(self) -> int:
        """Bytes of space the store really uses (holes excluded)."""

    def close(self) -> None:
        """Release the store; nothing is synced."""
