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
conf, client id and timeout, and shut down with the last of them.
``rados`` is imported only for a rados location: vdisk runs without Ceph.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tempfile
import threading
import uuid
from typing import Callable

from vdisk.btree import LmdbNodeStore
from vdisk.errors import AlreadyExists, Busy, IntegrityError, InvalidArgument, NotFound, StorageError

from . import ceph
from .container import create_container, require_container, write_empty_disk
from .datastore_file import FileDataStore, NotARegularFile
from .lockfile import release_lock, take_lock

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
                if held[1] == 0:
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
        if not _exists(ioctx, header):
            raise NotFound(f"no disk {loc} (no object {header} in pool {loc.pool})")
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


def _exists(ioctx, oid: str) -> bool:
    import rados
    try:
        ioctx.stat(oid)
        return True
    except rados.ObjectNotFound:
        return False
    except rados.Error as e:
        raise StorageError(f"cannot look up {oid}: {e}") from None


# ---------------------------------------------------------------- creating

def create(location, size: int, block_size: int) -> None:
    """Create an empty disk at ``location`` (size and block size checked by the caller)."""
    loc = parse(location)
    if not isinstance(loc, RadosLocation):
        create_container(loc, size, block_size)
        return
    from vdisk.btree.store_rados import RadosNodeStore     # noqa: PLC0415
    from .datastore_rados import RadosDataStore             # noqa: PLC0415
    cluster = _connect(loc)
    try:
        ioctx = ceph.open_pool(cluster, loc.pool)
        try:
            # The data store first, the node store last: its records are what
            # make the disk exist. A header of commit 0 is a creation that
            # died before its first commit: taken over.
            probe = _header_commit(ioctx, f"{loc.name}.header")
            if probe is not None and probe != 0:
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
        finally:
            ioctx.close()
    finally:
        _disconnect(cluster)


def _header_commit(ioctx, header: str) -> int | None:
    import rados
    op = ioctx.create_read_op()
    try:
        it, _ = ioctx.get_omap_vals_by_keys(op, ("commit",))
        ioctx.operate_read_op(op, header)
        got = dict(it)
    except rados.ObjectNotFound:
        return None
    except rados.Error as e:
        raise StorageError(f"cannot read {header}: {e}") from None
    finally:
        op.release()
    return int(got["commit"], 16) if "commit" in got else 0
