"""Where a disk lives: a local container (a directory) or ``rados:POOL/NAME``.

:class:`vdisk.disk.Disk` opens its stores through :func:`open_stores`, which
builds, for either kind of location, what the engine needs:

=================  ===============================  ==================================================
part               local container ``DIR``          ``rados:POOL/NAME``
=================  ===============================  ==================================================
node store         ``LmdbNodeStore(DIR/meta)``      ``RadosNodeStore(ioctx, NAME)``
data store         ``FileDataStore(DIR/data)``      ``RadosDataStore(ioctx, NAME)``
writer's lock      ``flock(DIR/lock)``              RADOS exclusive lock on ``NAME.header``
local directory    ``DIR`` itself                   :func:`state_dir`: sockets, scratch runs, ...
=================  ===============================  ==================================================

A writable RADOS open takes the lock *before* the node store is built
(its constructor replays a half-applied commit, which only the holder
may do); another holder makes it fail with Busy naming it, unless
``break_lock``: then the holder is fenced first (blocklisted, and the OSDs
told), so a holder that was merely paused can write nothing afterwards,
and only then is its lock broken and taken. A read-only open takes no
lock and reads committed state beside the writer (the node store's views).

The cluster handle is shared by every open of one process with the same
conf, client id and timeout, and shut down with the last of them - or,
inside :func:`hold_connections` (one CLI command), when the scope ends.
``rados`` is imported only for a rados location: vdisk runs without Ceph.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import shutil
import socket
import tempfile
import threading
import uuid
from typing import Callable

from vdisk.btree import LmdbNodeStore
from vdisk.errors import (AlreadyExists, Busy, IntegrityError, InvalidArgument, NotFound, StorageError,
                          UnsupportedVersion)

from . import ceph
from . import format as fmt
from .container import create_container, fsync_dir, require_container, write_empty_disk
from .datastore_file import FileDataStore, NotARegularFile
from .lockfile import release_lock, take_lock
from .names import DEFERRED_PREFIX, SNAP_META_PREFIX

PREFIX = "rados:"
# Bounds connecting and every monitor operation of a CLI command, so an
# unreachable cluster is an error, not a hang. Serving passes 0 for OSD ops.
DEFAULT_TIMEOUT = 30


@dataclasses.dataclass(frozen=True)
class RadosLocation:
    """``rados:POOL/NAME`` and the cluster to find it in (None: Ceph's defaults)."""

    pool: str
    name: str
    conf: str | None = None
    client_id: str | None = None
    # Seconds for connecting and monitor ops; OSD ops too unless ``osd_wait``.
    timeout: float = DEFAULT_TIMEOUT
    # OSD operations wait for ever (through an OSD restart): for serving.
    osd_wait: bool = False

    def __str__(self) -> str:
        return f"{PREFIX}{self.pool}/{self.name}"




def is_rados(location) -> bool:
    return isinstance(location, RadosLocation) or (isinstance(location, str) and location.startswith(PREFIX))


def parse(location, conf: str | None = None, client_id: str | None = None, **kw):
    """A path (str) for a local container, or a :class:`RadosLocation`.

    ``conf`` (else ``CEPH_CONF``, else Ceph's search path) and ``client_id``
    apply to a ``rados:`` string; a RadosLocation is returned as given.
    """
    if isinstance(location, RadosLocation):
        return location
    location = os.fspath(location)
    if not location.startswith(PREFIX):
        return location
    rest = location[len(PREFIX):]
    pool, sep, name = rest.partition("/")
    if not pool or not sep or not name:
        raise InvalidArgument(f"{location!r} is not rados:POOL/NAME (a pool, a slash, a disk name)")
    if "/" in name or name.startswith(".") or not name.isprintable() or any(c.isspace() for c in name):
        raise InvalidArgument(f"disk name {name!r} in {location!r}: printable, no spaces or '/', "
                              f"not starting with '.'")
    if len(name.encode()) > 200:
        raise InvalidArgument(f"disk name in {location!r} is longer than 200 bytes")
    conf = conf or os.environ.get("CEPH_CONF") or None
    return RadosLocation(pool, name, os.path.abspath(conf) if conf else None, client_id or None, **kw)


def describe(location) -> str:
    return str(location) if isinstance(location, RadosLocation) else os.path.abspath(location)


# ---------------------------------------------------------------- the cluster

_CLUSTERS: dict[tuple, list] = {}        # (conf, id, timeout, osd_wait) -> [rados.Rados, users]
_CLUSTERS_LOCK = threading.Lock()
_HOLDS = [0]                             # open hold_connections() scopes


@contextlib.contextmanager
def hold_connections():
    """Keep cluster handles connected until the scope ends, not just while a disk is open.

    A command looks a rados disk up more than once (its state directory
    for a server's socket, then the disk itself; resize reads, then
    writes): without this each look-up connects and shuts down a handle of
    its own. Inside the scope a handle whose last user let go stays
    connected for the next one, and every such idle handle is shut down
    when the outermost scope ends. The CLI holds one scope per command.
    """
    with _CLUSTERS_LOCK:
        _HOLDS[0] += 1
    try:
        yield
    finally:
        with _CLUSTERS_LOCK:
            _HOLDS[0] -= 1
            idle = []
            if _HOLDS[0] == 0:
                for key, held in list(_CLUSTERS.items()):
                    if held[1] == 0:
                        idle.append(_CLUSTERS.pop(key)[0])
        for cluster in idle:
            cluster.shutdown()


def _connect(loc: RadosLocation):
    key = (loc.conf, loc.client_id, loc.timeout, loc.osd_wait)
    with _CLUSTERS_LOCK:
        held = _CLUSTERS.get(key)
        if held is not None:
            held[1] += 1
            return held[0]
        try:
            import rados  # noqa: F401
        except ImportError:
            raise NotFound("the Ceph rados binding is not installed (Debian package python3-rados; "
                           "./dev setup installs it)") from None
        # A server's OSD operations wait (through an OSD restart); connecting never hangs.
        r = ceph.connect(loc.conf, loc.client_id, timeout=loc.timeout, osd_timeout=0 if loc.osd_wait else None)
        _CLUSTERS[key] = [r, 1]
        return r


def _disconnect(cluster) -> None:
    with _CLUSTERS_LOCK:
        for key, held in list(_CLUSTERS.items()):
            if held[0] is cluster:
                held[1] -= 1
                if held[1] == 0 and _HOLDS[0] == 0:
                    del _CLUSTERS[key]
                    cluster.shutdown()
                return


def state_dir(loc: RadosLocation, fsid: str) -> str:
    """This host's directory for a rados disk's local parts (owner-only).

    The control and NBD sockets, a snapshot deletion's scratch runs, a
    receive in progress: ``$XDG_RUNTIME_DIR/vdisk/rados/...`` when set,
    else ``/run/vdisk/rados/...`` for root, else under the system temp
    directory per user. Per cluster (its fsid), pool and disk, so every
    process on the host that opens the disk finds the same sockets.
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        base = os.path.join(runtime, "vdisk")
    elif os.geteuid() == 0 and os.path.isdir("/run"):
        base = "/run/vdisk"
    else:
        base = os.path.join(tempfile.gettempdir(), f"vdisk-{os.getuid()}")
    path = os.path.join(base, "rados", fsid[:8], loc.pool, loc.name)
    try:
        os.makedirs(path, 0o700, exist_ok=True)
    except OSError as e:
        raise StorageError(f"cannot make the local state directory {path} of {loc}: {e.strerror}") from None
    return path


def local_dir(location) -> str:
    """The local directory of a disk: the container itself, or a rados disk's
    :func:`state_dir` (which asks the cluster its fsid)."""
    loc = parse(location)
    if not isinstance(loc, RadosLocation):
        return loc
    cluster = _connect(loc)
    try:
        return state_dir(loc, cluster.get_fsid())
    finally:
        _disconnect(cluster)


# ---------------------------------------------------------------- opened stores

@dataclasses.dataclass
class Stores:
    """What :func:`open_stores` built; :meth:`release` undoes it (not the stores' close)."""

    path: str                   # the local directory (the container, or the state dir)
    node_store: object
    data_store: object
    where: dict                 # for info(): "kind" and the location's parts
    release: Callable[[], None]


def _nothing():
    pass


def open_stores(location, readonly: bool, break_lock: bool = False, data_store=None) -> Stores:
    """Lock (when writable) and build the stores of the disk at ``location``."""
    loc = parse(location)
    if not isinstance(loc, RadosLocation):
        return _open_local(loc, readonly, data_store)
    return _open_rados(loc, readonly, break_lock, data_store)


def _open_local(path: str, readonly: bool, data_store) -> Stores:
    require_container(path)                # before the lock file is created in it
    fd = None if readonly else take_lock(path)
    store = data = None
    try:
        meta_dir = os.path.join(path, "meta")
        if not os.path.isdir(meta_dir):
            raise IntegrityError(f"{path} is not a vdisk disk: {meta_dir} is missing")
        store = LmdbNodeStore(meta_dir, readonly=readonly, create=False)
        data = data_store if data_store is not None else open_data_file(path, readonly)
    except BaseException:
        # LMDB allows one environment per file per process: a store left
        # open here would make every later open of this disk fail.
        if store is not None:
            store.close()
        release_lock(fd)
        raise
    return Stores(path, store, data, {"kind": "local", "path": os.path.abspath(path)},
                  lambda: release_lock(fd))


def open_data_file(path: str, readonly: bool) -> FileDataStore:
    data_path = os.path.join(path, "data")
    try:
        return FileDataStore(data_path, readonly)
    except FileNotFoundError:
        raise IntegrityError(f"data file {data_path} is missing; the disk cannot be read") from None
    except NotARegularFile:
        raise IntegrityError(f"data file {data_path} is not a regular file") from None
    except OSError as e:
        raise IntegrityError(f"cannot open the data file {data_path}: {e.strerror}") from None


def _cookie() -> tuple[str, str]:
    return uuid.uuid4().hex, f"vdisk PID {os.getpid()} on {socket.gethostname()}"


def _open_rados(loc: RadosLocation, readonly: bool, break_lock: bool, data_store) -> Stores:
    from vdisk.btree.store_rados import RadosNodeStore     # noqa: PLC0415  (imports rados)
    from .datastore_rados import RadosDataStore             # noqa: PLC0415
    cluster = _connect(loc)
    ioctx = store = data = None
    locked = None
    header = f"{loc.name}.header"
    try:
        ioctx = ceph.open_pool(cluster, loc.pool)
        _header_state(ioctx, loc)              # NotFound: none, or a deletion that did not finish
        if not readonly:
            cookie, desc = _cookie()
            if break_lock:
                take_over(cluster, ioctx, header)
            try:
                ceph.lock_exclusive(ioctx, header, cookie, desc)
            except Busy as e:
                raise Busy(f"disk {loc} is in use: {e}; if that writer is dead or hung, take over with "
                           f"break_lock (vdisk serve --break-lock), which fences it first") from None
            locked = cookie
        store = RadosNodeStore(ioctx, loc.name, readonly=readonly, create=False,
                               guard=ceph.lock_guard(locked) if locked else None)
        if store.meta_get(b"disk/config") is None:
            raise NotFound(f"no disk {loc}: its creation did not finish (create it again)")
        try:
            data = data_store if data_store is not None else RadosDataStore(ioctx, loc.name, readonly=readonly,
                                                                            create=False)
        except OSError as e:
            raise IntegrityError(f"the data objects of {loc} cannot be opened: {e.strerror or e}") from None
        fsid = cluster.get_fsid()
        path = state_dir(loc, fsid)
    except BaseException:
        _release_rados(cluster, ioctx, header, locked)
        raise
    where = {"kind": "rados", "pool": loc.pool, "image": loc.name, "fsid": fsid, "conf": loc.conf,
             "client": loc.client_id, "location": str(loc)}
    return Stores(path, store, data, where, lambda: _release_rados(cluster, ioctx, header, locked))


def _release_rados(cluster, ioctx, header: str, cookie: str | None) -> None:
    try:
        if ioctx is not None:
            if cookie is not None:
                try:
                    ceph.unlock(ioctx, header, cookie)
                except Exception:      # fenced, or the lock was broken: nothing of ours is left
                    pass
            ioctx.close()
    finally:
        _disconnect(cluster)


def take_over(cluster, ioctx, header: str) -> list:
    """Fence every holder of ``header``'s lock, then break its lock; returns who it was."""
    held = ceph.lockers(ioctx, header)
    own = str(cluster.get_addrs())
    for lk in held:
        if "/" in lk.address and "/" + lk.address.rsplit("/", 1)[1] in own:
            # Fencing would blocklist this very process (one cluster handle
            # per conf and id): the holder is a disk still open here.
            raise Busy(f"{header} is locked by this process ({lk.description or lk.cookie}); close that "
                       f"disk instead of breaking its lock")
        ceph.fence(cluster, lk.address)
        ceph.break_lock(ioctx, header, lk)
    return held


def _header_state(ioctx, loc: RadosLocation):
    """The disk's header as store_rados.header_state reads it; NotFound when it
    has none, or when a deletion marked it (only vdisk delete goes on then)."""
    from vdisk.btree.store_rados import header_state      # noqa: PLC0415
    state = header_state(ioctx, loc.name)
    if state is None:
        raise NotFound(f"no disk {loc} (no object {loc.name}.header in pool {loc.pool})")
    if state.removing is not None:
        raise NotFound(f"no disk {loc}: it is being deleted ({state.removing}) and that delete did not "
                       f"finish; finish it with vdisk delete {loc}")
    return state


# ---------------------------------------------------------------- creating

def create(location, size: int, block_size: int) -> None:
    """Create an empty disk at ``location`` (size and block size checked by the caller)."""
    loc = parse(location)
    if not isinstance(loc, RadosLocation):
        create_container(loc, size, block_size)
        return
    from vdisk.btree.store_rados import RadosNodeStore, header_state     # noqa: PLC0415
    from .datastore_rados import RadosDataStore                          # noqa: PLC0415
    with _pool(loc) as (_cluster, ioctx):
        # The data store first, the node store last: its records are what
        # make the disk exist. A header of commit 0 is a creation that
        # died before its first commit: taken over.
        probe = header_state(ioctx, loc.name)
        if probe is not None and probe.removing is not None:
            raise AlreadyExists(f"disk {loc} is still there, half deleted ({probe.removing}); finish that "
                                f"with vdisk delete {loc}, then create it again")
        if probe is not None and probe.commit != 0:
            raise AlreadyExists(f"disk {loc} already exists")
        try:
            RadosDataStore(ioctx, loc.name).close()
        except OSError as e:
            raise StorageError(f"cannot create the data objects of {loc}: {e.strerror or e}") from None
        store = RadosNodeStore(ioctx, loc.name)
        if store.meta_get(b"disk/config") is not None:
            raise AlreadyExists(f"disk {loc} already exists")
        write_empty_disk(store, size, block_size)
        store.close()


@contextlib.contextmanager
def _pool(loc: RadosLocation):
    """(cluster, ioctx) of ``loc``'s pool, for one operation."""
    cluster = _connect(loc)
    try:
        ioctx = ceph.open_pool(cluster, loc.pool)
        try:
            yield cluster, ioctx
        finally:
            ioctx.close()
    finally:
        _disconnect(cluster)


# ---------------------------------------------------------------- deleting

@dataclasses.dataclass
class Deletion:
    """A disk :func:`find_deletion` found, or that :func:`delete` removed."""

    location: str               # the absolute path, or rados:POOL/NAME
    where: dict                 # as info() gives it
    local_dir: str              # where a server's control socket would be (the container, the state dir)
    size: int | None            # None: no records left to read (a delete or a creation cut short)
    snapshots: int | None       # likewise
    freed_bytes: int            # what deleting gives back: the container's files; the data objects that may exist
    resumed: bool               # a delete was cut short: only its rest is left, and this finishes it
    holder: str | None          # who holds the writer's lock (None: nobody)

    def refuse_if_held(self, break_lock: bool = False) -> "Deletion":
        """Busy naming the writer that holds the disk, as :func:`delete` would refuse
        (a rados disk's with ``break_lock``: none; it will be fenced)."""
        if self.holder is None:
            return self
        if self.where["kind"] == "local":
            raise Busy(f"disk {self.location} is {'being deleted by' if self.resumed else 'in use by'} "
                       f"{self.holder}")
        if not self.resumed and not break_lock:
            raise Busy(f"disk {self.location} is in use: {self.where['image']}.header is locked by "
                       f"{self.holder}; if that writer is dead or hung, delete with --break-lock, which "
                       f"fences it first")
        return self                         # a marked header: its lock keeps nobody out any more


def find_deletion(location) -> Deletion:
    """What :func:`delete` would remove, and who holds it (:meth:`Deletion.refuse_if_held`); changes nothing.

    NotFound for no disk (nor the rest of a delete cut short), NotADisk for
    a directory that is not a container, IntegrityError for a container
    whose records cannot be read (delete refuses it: then it is the user's
    to remove).
    """
    loc = parse(location)
    if not isinstance(loc, RadosLocation):
        return _find_local(os.path.abspath(loc))
    with _pool(loc) as (cluster, ioctx):
        return _find_rados(cluster, ioctx, loc)


def delete(location, break_lock: bool = False) -> Deletion:
    """Delete the disk at ``location``: every object or file of it, and its local state directory.

    Refuses (Busy, naming the holder) while a writer holds it; a rados
    disk's ``break_lock`` fences that writer first, as serving does. The
    order is crash-safe, so a delete cut short anywhere is finished by
    running it again, and nothing opens a half-deleted disk meanwhile:

    * a container is renamed to a hidden ``.NAME.deleting-PID`` beside it
      (one atomic rename, under the writer's lock), then removed;
    * a rados disk's header is marked first (one atomic op that takes the
      exclusive lock with it; opens refuse a marked header), then the data
      objects go (the object map last), the journal parts and node shards,
      and the header last, since it is what finds the shards.

    Readers on other hosts hold no lock and are not seen; theirs fail once
    the objects are gone. A served or mounted disk on this host is the
    caller's to refuse (the control socket in :attr:`Deletion.local_dir`).
    """
    loc = parse(location)
    if not isinstance(loc, RadosLocation):
        return _delete_local(os.path.abspath(loc))
    with _pool(loc) as (cluster, ioctx):
        return _delete_rados(cluster, ioctx, loc, break_lock)


_DELETING = ".deleting-"


def _leftovers(path: str) -> list[str]:
    """Hidden ``.NAME.deleting-PID`` directories that deletes of ``path`` left."""
    parent, base = os.path.split(path)
    prefix = f".{base}{_DELETING}"
    try:
        names = os.listdir(parent)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise StorageError(f"cannot list {parent}: {e.strerror}") from None
    return sorted(os.path.join(parent, n) for n in names if n.startswith(prefix) and n[len(prefix):].isdigit())


def _lock_holder(path: str) -> str | None:
    """Who holds ``path``'s writer's lock file, without taking it or writing it."""
    try:
        fd = os.open(os.path.join(path, "lock"), os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StorageError(f"cannot open {os.path.join(path, 'lock')}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return f"PID {os.pread(fd, 32, 0).decode(errors='replace').strip() or 'unknown'}"
    finally:
        os.close(fd)


def _tree_bytes(path: str) -> int:
    total = 0
    for top, dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(top, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def _find_local(path: str) -> Deletion:
    where = {"kind": "local", "path": path}
    if os.path.islink(path):
        raise InvalidArgument(f"{path} is a symbolic link; delete the disk it points to "
                              f"({os.path.realpath(path)}) by that name")
    if not os.path.lexists(path):
        left = _leftovers(path)
        if not left:
            raise NotFound(f"no disk at {path}")
        holders = [h for h in map(_lock_holder, left) if h]
        return Deletion(path, where, path, None, None, sum(map(_tree_bytes, left)), True,
                        f"vdisk delete ({holders[0]})" if holders else None)
    require_container(path)
    meta = os.path.join(path, "meta")
    # A directory with a "data" in it is not proof enough to remove it
    # whole: the container's records must read as a disk's.
    try:
        store = LmdbNodeStore(meta, readonly=True, create=False)
        try:
            config = store.meta_get(b"disk/config")
            snaps = store.meta_items(SNAP_META_PREFIX)
        finally:
            store.close()
        size = fmt.decode_config(config).size
    except (IntegrityError, StorageError, UnsupportedVersion) as e:
        raise IntegrityError(f"not deleting {path}: its records cannot be read as a vdisk disk's ({e}); if it "
                             f"is a disk you no longer want, remove the directory yourself") from None
    return Deletion(path, where, path, size, _count_snapshots(snaps), _tree_bytes(path), False,
                    _lock_holder(path))


def _count_snapshots(records) -> int:
    # Deleted snapshots kept as the base of others are no snapshots of the user's.
    return sum(1 for key, _ in records if not key[len(SNAP_META_PREFIX):].startswith(DEFERRED_PREFIX.encode()))


def _remove_dir(path: str) -> None:
    """Remove a renamed container, its lock file last (a live delete holds it: see _lock_holder)."""
    def gone_already(func, p, exc_info):
        if not isinstance(exc_info[1], FileNotFoundError):
            raise exc_info[1]
    try:
        for entry in os.listdir(path):
            full = os.path.join(path, entry)
            if entry == "lock":
                continue
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full, onerror=gone_already)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(full)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(path, "lock"))
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(path)
    except FileNotFoundError:
        pass                                   # another delete finished it beside us
    except OSError as e:
        raise StorageError(f"cannot remove {path}: {e.strerror or e}; run the delete again") from None


def _delete_local(path: str) -> Deletion:
    found = _find_local(path).refuse_if_held()
    parent = os.path.dirname(path)
    if found.resumed:
        _finish_leftovers(path)
        return found
    fd = take_lock(path)                       # Busy: "disk ... is in use by PID N"
    try:
        found = _find_local(path)              # again, now that nobody else can write it
        doomed = os.path.join(parent, f".{os.path.basename(path)}{_DELETING}{os.getpid()}")
        try:
            os.rename(path, doomed)
            fsync_dir(parent)
        except OSError as e:
            raise StorageError(f"cannot delete {path}: {e.strerror or e}") from None
        _remove_dir(doomed)
        _finish_leftovers(path)                # and what earlier deletes cut short left
    finally:
        release_lock(fd)
    return found


def _finish_leftovers(path: str) -> None:
    for left in _leftovers(path):
        if _lock_holder(left) is None:         # else a delete still running removes it
            _remove_dir(left)
    fsync_dir(os.path.dirname(path))


def _find_rados(cluster, ioctx, loc: RadosLocation) -> Deletion:
    from vdisk.btree.store_rados import RadosNodeStore, header_state     # noqa: PLC0415
    from .datastore_rados import RadosDataStore                          # noqa: PLC0415
    state = header_state(ioctx, loc.name)
    if state is None:
        raise NotFound(f"no disk {loc} (no object {loc.name}.header in pool {loc.pool})")
    fsid = cluster.get_fsid()
    where = {"kind": "rados", "pool": loc.pool, "image": loc.name, "fsid": fsid, "conf": loc.conf,
             "client": loc.client_id, "location": str(loc)}
    holder = _holders(ioctx, f"{loc.name}.header")
    size = snapshots = None
    resumed = state.removing is not None
    if not resumed:
        try:
            store = RadosNodeStore(ioctx, loc.name, readonly=True, create=False)
            config = store.meta_get(b"disk/config")
            if config is not None:          # else a creation that died: its objects go all the same
                size = fmt.decode_config(config).size
                snapshots = _count_snapshots(store.meta_items(SNAP_META_PREFIX))
        except NotFound:
            resumed = True                  # marked since header_state looked
    try:
        data = RadosDataStore(ioctx, loc.name, readonly=True, create=False)
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise StorageError(f"cannot open the data objects of {loc}: {e.strerror or e}") from None
        freed_bytes = 0                     # no object map (any more): no data objects
    else:
        freed_bytes = data.allocated_bytes()
        data.close()
    return Deletion(str(loc), where, state_dir(loc, fsid), size, snapshots, freed_bytes, resumed, holder)


def _holders(ioctx, header: str) -> str | None:
    return ", ".join(f"{lk.entity} at {lk.address} ({lk.description or lk.cookie})"
                     for lk in ceph.lockers(ioctx, header)) or None


def _delete_rados(cluster, ioctx, loc: RadosLocation, break_lock: bool) -> Deletion:
    from vdisk.btree.store_rados import mark_removing, remove_store     # noqa: PLC0415
    from .datastore_rados import RadosDataStore                          # noqa: PLC0415
    header = f"{loc.name}.header"
    found = _find_rados(cluster, ioctx, loc).refuse_if_held(break_lock)
    if not found.resumed:
        # The writer's lock and the mark in one atomic op: no writer holds
        # the disk when it lands, and none opens it afterwards. A marked
        # header needs no lock to go on with (the mark keeps writers out).
        cookie, desc = _cookie()
        if break_lock:
            take_over(cluster, ioctx, header)
        try:
            mark_removing(ioctx, loc.name, f"by vdisk delete, PID {os.getpid()} on {socket.gethostname()}",
                          guard=ceph.lock_taker(cookie, f"deleting: {desc}"))
        except Busy:
            found.holder = _holders(ioctx, header) or "another client"
            found.refuse_if_held()
            raise
    try:
        data = RadosDataStore(ioctx, loc.name, create=False)
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise StorageError(f"cannot open the data objects of {loc}: {e.strerror or e}; run the delete "
                               f"again") from None
    else:
        try:
            data.remove()                     # the objects, then the map that finds them
        except OSError as e:
            raise StorageError(f"removing the data objects of {loc} failed: {e.strerror or e}; run the "
                               f"delete again") from None
    remove_store(ioctx, loc.name)             # journal parts, node shards, the header last
    shutil.rmtree(found.local_dir, ignore_errors=True)
    return found
