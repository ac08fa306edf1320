"""The one place that talks to a Ceph cluster as a whole: connect, lock, fence.

The RADOS stores (:mod:`vdisk.datastore_rados`,
:mod:`vdisk.btree.store_rados`) take an open ``rados.Ioctx`` and never
connect themselves; this module makes that ioctx, and holds the writer's
exclusive lock on a disk's header object and the fencing around it:

* :func:`connect`: a cluster handle from a conf file (``CEPH_CONF``, else
  Ceph's default search path) and a client id, with bounded waits.
* :func:`lock_exclusive` / :func:`unlock` / :func:`lockers`: RADOS
  advisory locks (``cls_lock``), as RBD's exclusive lock uses them.
* :func:`lock_guard`: a function adding ``lock.assert_locked`` to a write
  operation, which :class:`vdisk.btree.store_rados.RadosNodeStore` puts into
  every commit: a writer whose lock was broken cannot commit.
  :func:`lock_taker` adds ``lock.lock`` instead: the op takes the lock and
  makes its changes in one atomic step (a deletion's mark).
* :func:`fence`: blocklist a dead or paused holder's address and wait until
  the OSDs know, so none of its later writes (data or metadata) lands.

``rados`` is imported on first use: vdisk runs without Ceph installed.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import struct

from .errors import Busy, NotFound, StorageError

LOCK_NAME = "vdisk"
_EXCLUSIVE = 1            # ClsLockType::EXCLUSIVE


def connect(conf: str | None = None, client_id: str | None = None, timeout: float = 30,
            osd_timeout: float | None = None):
    """A connected ``rados.Rados``; raises StorageError if the cluster cannot be reached.

    ``timeout`` bounds the connection and every later monitor and OSD
    operation, so a dead cluster turns into an error, not a hang. (OSD
    operations are otherwise allowed to wait for ever, which is what rides
    out an OSD restart; pass ``timeout=0`` for that, or ``osd_timeout=0``
    to bound only connecting and the monitors.)
    """
    import rados
    conf = conf or os.environ.get("CEPH_CONF") or None
    opts = {"client_mount_timeout": str(int(timeout or 300)), "rados_mon_op_timeout": str(int(timeout))}
    osd_timeout = timeout if osd_timeout is None else osd_timeout
    if osd_timeout:
        opts["rados_osd_op_timeout"] = str(int(osd_timeout))
    try:
        r = rados.Rados(conffile=conf or rados.Rados.DEFAULT_CONF_FILES, rados_id=client_id, conf=opts)
    except rados.ObjectNotFound:
        raise NotFound(f"no Ceph configuration {conf}" if conf else
                       "no Ceph configuration found (give --ceph-conf FILE or CEPH_CONF, or make "
                       "/etc/ceph/ceph.conf)") from None
    except rados.Error as e:
        raise StorageError(f"cannot read the Ceph configuration {conf or '(default search path)'}: {e}") from None
    try:
        r.connect(timeout=int(timeout or 300))
    except rados.Error as e:
        r.shutdown()
        raise StorageError(f"cannot reach the Ceph cluster ({conf or 'default configuration'}): {e}") from None
    return r


def open_pool(cluster, pool: str):
    """An ioctx on ``pool``; NotFound if the pool does not exist."""
    import rados
    try:
        return cluster.open_ioctx(pool)
    except rados.ObjectNotFound:
        raise NotFound(f"Ceph pool {pool} does not exist") from None
    except rados.Error as e:
        raise StorageError(f"cannot open Ceph pool {pool}: {e}") from None


# ---------------------------------------------------------------- cls_lock

def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<I", len(b)) + b


def _struct(body: bytes) -> bytes:
    """Ceph's ENCODE_START(1, 1): version, compat version, length."""
    return struct.pack("<BBI", 1, 1, len(body)) + body


@dataclasses.dataclass(frozen=True)
class Locker:
    entity: str          # client.4123
    cookie: str
    address: str         # 127.0.0.1:0/3312749 - what fence() blocklists
    description: str


def lock_exclusive(ioctx, oid: str, cookie: str, description: str = "", name: str = LOCK_NAME) -> None:
    """Take the exclusive lock on ``oid``; Busy naming the holder if another has it."""
    import rados
    try:
        ioctx.lock_exclusive(oid, name, cookie, desc=description)
    except (rados.ObjectBusy, rados.ObjectExists):
        held = lockers(ioctx, oid, name)
        who = ", ".join(f"{lk.entity} at {lk.address} ({lk.description or lk.cookie})" for lk in held)
        raise Busy(f"{oid} is locked by {who or 'another client'}") from None
    except rados.Error as e:
        raise StorageError(f"cannot lock {oid}: {e}") from None


def unlock(ioctx, oid: str, cookie: str, name: str = LOCK_NAME) -> None:
    import rados
    try:
        ioctx.unlock(oid, name, cookie)
    except rados.ObjectNotFound:
        pass


def break_lock(ioctx, oid: str, locker: Locker, name: str = LOCK_NAME) -> None:
    """Remove another client's lock (call :func:`fence` on it first)."""
    import rados
    body = _str(name) + struct.pack("<BQ", 8, int(locker.entity.split(".", 1)[1])) + _str(locker.cookie)
    try:
        ioctx.execute(oid, "lock", "break_lock", _struct(body))
    except rados.ObjectNotFound:
        pass


def lock_guard(cookie: str, name: str = LOCK_NAME):
    """``guard(write_op)``: make the op fail (EBUSY) unless we still hold the lock."""
    payload = _struct(_str(name) + struct.pack("<B", _EXCLUSIVE) + _str(cookie) + _str(""))

    def guard(op) -> None:
        op.execute("lock", "assert_locked", payload)
    return guard


def lock_taker(cookie: str, description: str = "", name: str = LOCK_NAME):
    """``take(write_op)``: take the exclusive lock inside ``write_op`` (``lock.lock``).

    The op's other changes then land only together with the lock, or not at
    all (EBUSY: another holds it): one atomic step where :func:`lock_exclusive`
    and a guarded op would be two, with a lock left behind if the process
    dies between them.
    """
    payload = _struct(_str(name) + struct.pack("<B", _EXCLUSIVE) + _str(cookie) + _str("") + _str(description)
                      + struct.pack("<IIB", 0, 0, 0))           # duration (none: held until unlocked), flags

    def take(op) -> None:
        op.execute("lock", "lock", payload)
    return take


def lockers(ioctx, oid: str, name: str = LOCK_NAME) -> list[Locker]:
    """Who holds lock ``name`` on ``oid`` (``lock.get_info``)."""
    import rados
    try:
        _, out = ioctx.execute(oid, "lock", "get_info", _struct(_str(name)), length=65536)
    except rados.ObjectNotFound:
        return []
    return _decode_lockers(out)


class _Reader:
    def __init__(self, b: bytes):
        self.b, self.pos = b, 0

    def take(self, fmt: str):
        v = struct.unpack_from(fmt, self.b, self.pos)
        self.pos += struct.calcsize(fmt)
        return v if len(v) > 1 else v[0]

    def string(self) -> str:
        n = self.take("<I")
        self.pos += n
        return self.b[self.pos - n:self.pos].decode(errors="replace")

    def struct_end(self) -> int:
        _v, _compat, n = self.take("<BBI")
        return self.pos + n


def _decode_lockers(out: bytes) -> list[Locker]:
    r = _Reader(out)
    r.struct_end()
    found = []
    for _ in range(r.take("<I")):
        end = r.struct_end()                            # locker_id_t
        etype, num = r.take("<Bq")
        cookie = r.string()
        r.pos = end
        end = r.struct_end()                            # locker_info_t
        r.take("<II")                                   # expiration
        addr = _decode_addr(r)
        desc = r.string()
        r.pos = end
        kind = {1: "mon", 2: "mds", 4: "osd", 8: "client", 16: "mgr"}.get(etype, f"type{etype}")
        found.append(Locker(f"{kind}.{num}", cookie, addr, desc))
    return found


def _decode_addr(r: _Reader) -> str:
    marker = r.take("<B")
    if marker != 1:
        raise StorageError(f"unexpected entity address encoding {marker} in a lock record")
    end = r.struct_end()
    _type, nonce, elen = r.take("<III")
    sa = r.b[r.pos:r.pos + elen]
    r.pos = end
    if len(sa) >= 8 and struct.unpack_from("<H", sa)[0] == 2:            # AF_INET
        port = struct.unpack_from(">H", sa, 2)[0]
        ip = ".".join(str(x) for x in sa[4:8])
        return f"{ip}:{port}/{nonce}"
    if len(sa) >= 24 and struct.unpack_from("<H", sa)[0] == 10:          # AF_INET6
        import ipaddress
        port = struct.unpack_from(">H", sa, 2)[0]
        return f"[{ipaddress.IPv6Address(sa[8:24])}]:{port}/{nonce}"
    return f"-/{nonce}"


# ---------------------------------------------------------------- fencing

def fence(cluster, address: str, expire_seconds: int = 7 * 24 * 3600) -> None:
    """Blocklist ``address`` and wait until ``cluster`` has the osdmap that says so.

    An OSD refuses the fenced client once it holds that map, and it takes
    it before it serves an op of ``cluster``'s, which carries the new epoch:
    so fence and then break the lock with the same ``cluster``
    (vdisk/location.py ``take_over``); what it writes afterwards, no fenced
    write can land over.
    """
    import rados
    try:
        cluster.blocklist_add(address, expire_seconds)
        cluster.wait_for_latest_osdmap()
    except rados.Error as e:
        raise StorageError(f"cannot blocklist {address}: {e}") from None


def is_fenced_error(e: BaseException) -> bool:
    """True for the error a blocklisted client's operations fail with."""
    return getattr(e, "errno", None) in (errno.ESHUTDOWN, 108)
