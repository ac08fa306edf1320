"""nbdkit Python plugin (API version 2) serving a vdisk disk over NBD.

Run by Debian's nbdkit python plugin, normally through ``vdisk serve``::

    nbdkit -f -U SOCK python /path/to/nbdplugin/plugin.py disk=DISK [sitedir=DIR] [control=on|off]

Keys:

* ``disk`` (required) - the disk directory.
* ``sitedir`` - a site-packages directory holding vdisk and its dependencies
  (``vdisk serve`` passes its own). Without it the plugin looks beside itself:
  an installed ``.../site-packages/vdisk/nbdplugin/plugin.py`` or a source
  tree's ``.venv``. See docs/NBD.md for why this is needed at all.
* ``readonly`` - ``on`` opens the disk read-only, without the writer lock,
  beside any writer (give nbdkit ``-r`` too). Per-export read-only (snapshots)
  comes from ``can_write``, not from this.
* ``control`` - ``on`` (default for a writable server) runs the live-control
  socket ``DISK/control.sock``; ``off`` does not.
* ``owner`` - how the control socket's ``hello`` names this server.

Exports: ``""`` (the default) is the running point, read-write unless nbdkit
runs with ``-r``; every snapshot is a read-only export under its own name,
listed (with a description) by ``nbdinfo --list``. Names are looked up at
each connection, so a snapshot created while serving is reachable at once.

Thread model: ``SERIALIZE_ALL_REQUESTS`` for a local disk. Every request
ends in one :class:`vdisk.Disk` whose lock serialises calls anyway, and the
engine is pure Python under the GIL: letting nbdkit run requests in
parallel buys no concurrency and costs lock hand-offs between threads
(measured in bench/nbd_bench.py, docs/NBD.md). ``PARALLEL`` for a rados:
disk: there a read waits for the cluster outside the disk's lock
(vdisk/reader.py ``_fetch``), so requests overlap their round trips.

The disk and the control thread are created in ``after_fork``: nbdkit forks
when it daemonizes, threads do not survive a fork, and LMDB environments must
not be used across one.
"""

import errno
import io
import os
import sys
import time

import nbdkit

API_VERSION = 2

# Largest request the plugin accepts, matching what it advertises in
# block_size(); nbdkit itself refuses requests over 64 MiB.
MAX_REQUEST = 32 << 20

# nbdkit runs this file like a script and removes __file__ once it has run.
_PLUGIN_FILE = os.path.realpath(__file__)


class _Config:
    disk_path = None
    sitedir = None
    readonly = False        # open the disk read-only (no writer lock); use with nbdkit -r
    control = None          # None: on for a writable server
    owner = "vdisk serve (nbdkit)"
    ceph_conf = None        # rados:POOL/NAME disks: the cluster's configuration,
    ceph_id = None          # the Ceph client name,
    break_lock = False      # and whether to fence the holder and take its lock


_cfg = _Config()
_state = None   # vdisk.nbdplugin.state.ServerState, created in after_fork
VdiskError = None   # vdisk.errors.VdiskError once config_complete imported vdisk


# ---------------------------------------------------------------- locating vdisk

def _venv_python_version(site_packages):
    """(major, minor) of the venv holding site_packages, or None if unknown."""
    venv = os.path.dirname(os.path.dirname(os.path.dirname(site_packages)))
    try:
        with io.open(os.path.join(venv, "pyvenv.cfg")) as f:   # open() below is the NBD callback
            for line in f:
                key, _, value = line.partition("=")
                if key.strip() in ("version", "version_info"):
                    return tuple(int(x) for x in value.strip().split(".")[:2])
    except (OSError, ValueError):
        pass
    return None


def _candidate_sitedirs():
    if _cfg.sitedir:
        return [_cfg.sitedir]
    here = os.path.dirname(_PLUGIN_FILE)
    out = []
    pkg_parent = os.path.dirname(os.path.dirname(here))   # installed: site-packages/vdisk/nbdplugin
    if os.path.basename(pkg_parent) in ("site-packages", "dist-packages"):
        out.append(pkg_parent)
    root = os.path.dirname(here)                            # source tree: ROOT/nbdplugin
    out.append(os.path.join(root, ".venv", "lib", "python%d.%d" % sys.version_info[:2], "site-packages"))
    return out


def _import_vdisk():
    """Put vdisk's environment on sys.path, then import it.

    nbdkit embeds the system interpreter, whose sys.path knows nothing of the
    project's venv. site.addsitedir reads the venv's .pth files too (the
    editable install's finder lives there). Its directories go first so that
    a Debian package of the same name cannot shadow the version vdisk was
    installed with.
    """
    global VdiskError
    import site
    for sitedir in _candidate_sitedirs():
        if not os.path.isdir(sitedir):
            if _cfg.sitedir:
                raise RuntimeError("sitedir %s does not exist" % sitedir)
            continue
        want = _venv_python_version(sitedir)
        if want is not None and want != sys.version_info[:2]:
            raise RuntimeError(
                "the environment at %s is for Python %d.%d but nbdkit embeds Python %d.%d: its compiled "
                "modules (lmdb, blake3) cannot load; rebuild it with /usr/bin/python3 (./dev setup)"
                % ((sitedir,) + want + sys.version_info[:2]))
        before = list(sys.path)
        site.addsitedir(sitedir)
        added = [p for p in sys.path if p not in before]
        sys.path[:] = added + before
        break
    try:
        import vdisk.errors
    except ImportError as e:
        raise RuntimeError("cannot import vdisk (%s); tried %s; pass sitedir=.../site-packages"
                           % (e, ", ".join(_candidate_sitedirs()))) from None
    VdiskError = vdisk.errors.VdiskError


# ---------------------------------------------------------------- configuration

def config(key, value):
    if key == "disk":
        _cfg.disk_path = value if value.startswith("rados:") else os.path.abspath(value)
    elif key == "ceph_conf":
        _cfg.ceph_conf = os.path.abspath(value)
    elif key == "ceph_id":
        _cfg.ceph_id = value
    elif key == "break_lock":
        _cfg.break_lock = _on_off(key, value)
    elif key == "sitedir":
        _cfg.sitedir = os.path.abspath(value)
    elif key == "control":
        _cfg.control = _on_off(key, value)
    elif key == "readonly":
        _cfg.readonly = _on_off(key, value)
    elif key == "owner":
        _cfg.owner = value
    else:
        raise RuntimeError("unknown parameter %r (known: disk, sitedir, readonly, control, owner, ceph_conf, ceph_id, break_lock)" % key)


def _on_off(key, value):
    if value not in ("on", "off"):
        raise RuntimeError("%s must be on or off, not %r" % (key, value))
    return value == "on"


def config_complete():
    if _cfg.disk_path is None:
        raise RuntimeError("missing parameter disk=DISK")
    # nbdkit sets umask 022 itself and binds its unix socket after this
    # callback: under 077 the NBD socket, and whatever this process creates,
    # is its owner's alone whatever the umask vdisk serve was started with.
    os.umask(0o077)
    _import_vdisk()
    if _cfg.disk_path.startswith("rados:"):
        from vdisk.location import parse
        # Serving: OSD operations wait through an OSD restart instead of failing.
        _cfg.disk_path = parse(_cfg.disk_path, conf=_cfg.ceph_conf, client_id=_cfg.ceph_id, osd_wait=True)
    elif not os.path.isdir(os.path.join(_cfg.disk_path, "meta")):
        raise RuntimeError("%s is not a vdisk disk" % _cfg.disk_path)


def _parallel():
    """Whether requests run at once: for a rados: disk (see the module's docstring)."""
    return not isinstance(_cfg.disk_path, str)     # config_complete parsed a rados: location


def thread_model():
    if _parallel():
        return nbdkit.THREAD_MODEL_PARALLEL
    return nbdkit.THREAD_MODEL_SERIALIZE_ALL_REQUESTS


def after_fork():
    """Open the disk and start the control server in the serving process."""
    global _state
    from vdisk.nbdplugin.state import ServerState
    want_control = _cfg.control if _cfg.control is not None else not _cfg.readonly
    try:
        _state = ServerState(_cfg.disk_path, _cfg.readonly, control=want_control, owner=_cfg.owner,
                             break_lock=_cfg.break_lock, parallel=_parallel())
    except VdiskError as e:
        # A traceback would bury the one line that matters (usually "in use by
        # PID N"); nothing is served yet, so stop here with the error's code.
        sys.stderr.write("vdisk: error: %s\n" % e)
        sys.stderr.flush()
        os._exit(e.exit_code)


def cleanup():
    global _state
    if _state is not None:
        _state.close()
        _state = None


# ---------------------------------------------------------------- requests

class ClientError(Exception):
    """A request failed; nbdkit logs this one line and sends the errno set with it."""


def _request(fn):
    """Run one NBD request inside the I/O gate, with vdisk errors mapped to errnos.

    A vdisk error is re-raised as a one-line ClientError ``from None``, so
    nbdkit's log shows the reason instead of the engine's whole stack, and
    the client gets the errno the error class carries.
    """
    def run(h, *args):
        with _state.request():
            if _state.closed:
                nbdkit.set_error(errno.ESHUTDOWN)
                raise ClientError("the server is shutting down")
            try:
                return fn(h, *args)
            except VdiskError as e:
                nbdkit.set_error(getattr(e, "errno", errno.EIO))
                raise ClientError("%s: %s" % (type(e).__name__, e)) from None
    run.__name__ = fn.__name__
    run.__doc__ = fn.__doc__
    return run


# ---------------------------------------------------------------- exports

def _description(name):
    d = _state.disk
    if name == "":
        mode = "read-only" if d.readonly else "read-write"
        return "vdisk %s: running point (%s)" % (d.location, mode)
    for s in d.snapshots(exclusive=False):
        if s.name == name:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.created))
            return "vdisk %s: snapshot %s taken %s (read-only)" % (d.location, name, when)
    return "vdisk %s: snapshot %s (read-only)" % (d.location, name)


@_request
def _list_exports(_h):
    names = [s.name for s in _state.disk.snapshots(exclusive=False)]
    return [("", _description(""))] + [(n, _description(n)) for n in names]


def list_exports(readonly, is_tls):
    return _list_exports(None)


def default_export(readonly, is_tls):
    return ""


class _Handle:
    __slots__ = ("name", "dev", "writable", "closed")

    def __init__(self, name, dev, writable):
        self.name = name
        self.dev = dev
        self.writable = writable
        self.closed = False


@_request
def _open(_h, readonly, name):
    d = _state.disk
    # Counted before the snapshot is opened, so a deletion that starts in
    # between sees this connection (and refuses) instead of removing the
    # snapshot under it.
    _state.connect(name)
    try:
        if name == "":
            return _Handle("", d, not readonly and not d.readonly)
        return _Handle(name, d.open_snapshot(name), False)
    except BaseException:
        _state.disconnect(name)
        raise


def open(readonly):
    try:
        name = nbdkit.export_name()
    except UnicodeDecodeError:
        # NBD names are UTF-8 by the protocol; vdisk's are, too.
        nbdkit.set_error(errno.ENOENT)
        raise ClientError("export name is not UTF-8: no such export") from None
    return _open(None, readonly, name)


def close(h):
    if not h.closed:
        h.closed = True
        _state.disconnect(h.name)


@_request
def export_description(h):
    return _description(h.name)


def get_size(h):
    return h.dev.size


def block_size(h):
    # Any alignment works (the engine merges partial blocks), but whole
    # blocks avoid a read-modify-write, hence the preferred size.
    return (1, _state.disk.block_size, MAX_REQUEST)


def is_rotational(h):
    return False


def can_write(h):
    return h.writable


def can_flush(h):
    return h.writable


def can_trim(h):
    return h.writable


def can_zero(h):
    return h.writable


def can_fast_zero(h):
    # Zeroing whole blocks only unmaps them: never slower than writing.
    return h.writable


def can_fua(h):
    return nbdkit.FUA_NATIVE if h.writable else nbdkit.FUA_NONE


def can_multi_conn(h):
    # Every connection of this process shares one Disk: a write is visible to
    # all connections once it returns, and a flush on any connection commits
    # all of them - exactly the NBD multi-conn consistency rule.
    return True


def can_extents(h):
    return True


def can_cache(h):
    return nbdkit.CACHE_NONE


def _check_size(count):
    if count > MAX_REQUEST:
        nbdkit.set_error(errno.EINVAL)
        raise ClientError("request of %d bytes is larger than the %d advertised" % (count, MAX_REQUEST))


@_request
def pread(h, buf, offset, flags):
    _check_size(len(buf))
    h.dev.readinto(offset, buf)


@_request
def pwrite(h, buf, offset, flags):
    _check_size(len(buf))
    h.dev.write(offset, buf)
    if flags & nbdkit.FLAG_FUA:
        h.dev.flush()


@_request
def flush(h, flags):
    h.dev.flush()


@_request
def trim(h, count, offset, flags):
    h.dev.trim(offset, count)
    if flags & nbdkit.FLAG_FUA:
        h.dev.flush()


@_request
def zero(h, count, offset, flags):
    if flags & nbdkit.FLAG_MAY_TRIM:
        h.dev.zero(offset, count)
    elif flags & nbdkit.FLAG_FAST_ZERO:
        # NBD_CMD_FLAG_NO_HOLE wants the range allocated, so zeros would be
        # written: no faster than a write, which is what fast-zero asks.
        nbdkit.set_error(errno.ENOTSUP)
        raise ClientError("fast zero refused: zeroing without holes writes blocks")
    else:
        _write_zeros(h.dev, offset, count)
    if flags & nbdkit.FLAG_FUA:
        h.dev.flush()


def _write_zeros(dev, offset, count):
    chunk = memoryview(bytes(min(count, 4 << 20)))
    end = offset + count
    while offset < end:
        n = min(len(chunk), end - offset)
        dev.write(offset, chunk[:n])
        offset += n


@_request
def extents(h, count, offset, flags):
    out = [(e.offset, e.length, (0 if e.allocated else nbdkit.EXTENT_HOLE) | (nbdkit.EXTENT_ZERO if e.zero else 0))
           for e in h.dev.block_status(offset, count)]
    return out[:1] if flags & nbdkit.FLAG_REQ_ONE else out
