"""``vdisk serve``: export a disk over NBD with nbdkit and the vdisk plugin.

nbdkit runs in the foreground as this command's child (``--exit-with-parent``
so it never outlives us). This process waits until the server is ready,
prints the NBD URIs, and on Ctrl-C or SIGTERM asks nbdkit to stop, which
makes the plugin flush the disk, stop its control socket and release the
writer lock; then it removes the NBD socket, which nbdkit leaves behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.parse

import click

from vdisk.errors import Busy, InvalidArgument, NotFound, VdiskError

from .common import disk_argument, is_rados, json_option, local_dir, require_disk, require_finished, resolve

READY_TIMEOUT = 60.0
# nbdkit exits on SIGTERM only once its clients disconnect; after this long
# the disk is flushed and closed over the control socket and nbdkit killed.
CLIENT_GRACE = 3.0
# A last resort only: a final flush can take long on a big disk.
STOP_TIMEOUT = 600.0
DEFAULT_SOCKET = "nbd.sock"
PIDFILE_NAME = "nbdkit.pid"
DEFAULT_BIND = "127.0.0.1"
X509_FILES = ("ca-cert.pem", "server-cert.pem", "server-key.pem")


@click.command()
@disk_argument
@click.option("--socket", "socket_path", type=click.Path(dir_okay=False),
              help=f"Unix socket to listen on (default: DISK/{DEFAULT_SOCKET}).")
@click.option("--port", type=click.IntRange(1, 65535), help="Listen on this TCP port instead of a unix socket.")
@click.option("--bind", help=f"Address to listen on with --port (default {DEFAULT_BIND}).")
@click.option("--readonly", is_flag=True,
              help="Serve read-only, without the writer lock (another process may write).")
@click.option("--tls", is_flag=True,
              help="Require TLS on every connection (nbdkit --tls=require), with --tls-certificates "
                   "or --tls-psk.")
@click.option("--tls-certificates", type=click.Path(file_okay=False),
              help="X.509: directory with ca-cert.pem, server-cert.pem, server-key.pem (implies --tls).")
@click.option("--tls-psk", type=click.Path(dir_okay=False),
              help="Pre-shared keys: file of USERNAME:HEXKEY lines, e.g. from psktool (implies --tls).")
@click.option("--insecure", is_flag=True,
              help="Allow plaintext NBD on a --bind address other than loopback.")
@click.option("--break-lock", is_flag=True,
              help="rados: disks: take over from a writer that died or hangs on another host (or "
                   "process); it is blocklisted in the cluster first, so it can write nothing after.")
@json_option
def serve(disk, socket_path, port, bind, readonly, tls, tls_certificates, tls_psk, insecure, break_lock, as_json):
    """Serve DISK over NBD until Ctrl-C or SIGTERM.

    The running point is the default export, each snapshot a read-only
    export under its name; the URIs are printed once it serves (with --json,
    a "serving" event, then "stopped": docs/CLI.md).

    While it runs, `vdisk snapshot ...`, `vdisk info` and `vdisk resize` on
    DISK go through the server, so snapshots can be taken live.

    Listens on DISK/nbd.sock, or with --port on 127.0.0.1. A --bind
    address other than loopback needs TLS (or --insecure for plaintext).
    A rados:POOL/NAME disk listens in its local state directory (printed),
    and --break-lock takes it over from a dead or hung writer.

    Example: vdisk serve vm1.vdisk    (then: nbdinfo --list 'nbd+unix:///?socket=vm1.vdisk/nbd.sock')
    """
    run(disk, socket_path, port, bind, readonly,
        tls=TLS.of(tls, tls_certificates, tls_psk), insecure=insecure, as_json=as_json, break_lock=break_lock)

class TLS:
    """How connections are secured: ``kind`` "x509" (``path`` a certificate
    directory) or "psk" (``path`` a key file); None means plaintext."""

    def __init__(self, kind: str, path: str):
        self.kind = kind
        self.path = os.path.abspath(path)

    @classmethod
    def of(cls, tls: bool, certificates: str | None, psk: str | None) -> "TLS | None":
        if certificates is not None and psk is not None:
            raise InvalidArgument("--tls-certificates and --tls-psk exclude each other")
        if certificates is not None:
            return cls("x509", certificates)
        if psk is not None:
            return cls("psk", psk)
        if tls:
            raise InvalidArgument("--tls needs --tls-certificates DIR (X.509) or --tls-psk FILE (pre-shared keys)")
        return None

    def check(self):
        """Refuse credentials nbdkit would fail on later, with a less clear message."""
        if self.kind == "x509":
            if not os.path.isdir(self.path):
                raise NotFound(f"TLS certificate directory {self.path} does not exist")
            missing = [f for f in X509_FILES if not os.path.isfile(os.path.join(self.path, f))]
            if missing:
                raise NotFound(f"TLS certificate directory {self.path} has no {', '.join(missing)} "
                               f"(it needs {', '.join(X509_FILES)}; docs/NBD.md shows how to make them)")
            secret = os.path.join(self.path, "server-key.pem")
        else:
            if not os.path.isfile(self.path):
                raise NotFound(f"TLS pre-shared key file {self.path} does not exist")
            secret = self.path
        if os.stat(secret).st_mode & 0o077:
            click.echo(f"vdisk: warning: {secret} is readable by other users, who could then impersonate "
                       f"this server or its clients (chmod 600 {secret})", err=True)

    def describe(self) -> str:
        if self.kind == "x509":
            return f"TLS required (X.509 certificates in {self.path})"
        return f"TLS required (pre-shared keys in {self.path})"


def is_loopback(address: str) -> bool:
    """True if every address ``address`` names is a loopback one.

    A name is resolved, and one that does not resolve counts as not
    loopback: refusing is the safe answer to a doubt.
    """
    try:
        addrs = [ipaddress.ip_address(address)]
    except ValueError:
        try:
            infos = socket.getaddrinfo(address, None, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError):
            return False
        addrs = [ipaddress.ip_address(i[4][0].split("%")[0]) for i in infos]
    # ::ffff:127.0.0.1 is loopback too, though ipaddress says otherwise before Python 3.13.
    addrs = [getattr(a, "ipv4_mapped", None) or a for a in addrs]
    return bool(addrs) and all(a.is_loopback for a in addrs)


def check_exposure(port, bind, tls: "TLS | None", insecure: bool):
    """Plaintext NBD only where no one else can listen in, unless asked for."""
    if insecure and tls is not None:
        raise InvalidArgument("--insecure (plaintext on a non-loopback address) and --tls exclude each other")
    if port is None or bind is None or tls is not None or insecure or is_loopback(bind):
        return
    raise InvalidArgument(f"--bind {bind} is not a loopback address: anyone who reaches it could read and "
                          f"write the disk; add --tls-certificates DIR or --tls-psk FILE, or --insecure to "
                          f"serve plaintext anyway")


def run(disk, socket_path=None, port=None, bind=None, readonly=False, tls: TLS | None = None,
        insecure: bool = False, as_json: bool = False, break_lock: bool = False):
    """Serve until a signal; engine errors propagate (the command maps them)."""
    if bind is not None and port is None:
        raise click.UsageError("--bind needs --port")
    if socket_path is not None and port is not None:
        raise click.UsageError("--socket and --port exclude each other")
    check_exposure(port, bind, tls, insecure)
    if tls is not None:
        tls.check()
    rados = is_rados(disk)
    if break_lock and (not rados or readonly):
        raise InvalidArgument("--break-lock is for serving a rados:POOL/NAME disk for writing (a local "
                              "disk's lock goes when its holder dies)")
    require_disk(disk)
    if not break_lock:
        require_finished(disk)        # (a held rados lock is broken by the plugin, not before)
    if rados:
        location = resolve(disk)
        path = local_dir(location)    # this host's directory for its sockets
        shown = str(location)
    else:
        location = path = shown = os.path.abspath(disk)
    from vdisk.nbdplugin import NBDKIT, nbdkit_command, nbdkit_env
    env = nbdkit_env()
    if shutil.which(NBDKIT, path=env["PATH"]) is None:
        raise NotFound("nbdkit is not installed (Debian packages nbdkit and nbdkit-plugin-python; "
                         "./dev setup installs them)")
    if not readonly:
        _refuse_if_served(path)
    sock = None
    if port is None:
        sock = os.path.abspath(socket_path or os.path.join(path, DEFAULT_SOCKET))
        _prepare_socket_path(sock)
    if readonly:
        # Beside a writer, and maybe in a directory this user cannot write.
        tmp = tempfile.mkdtemp(prefix="vdisk-serve-")
        pidfile = os.path.join(tmp, "nbdkit.pid")
    else:
        # In the disk (one writer at a time holds its lock), so a serve that
        # was killed leaves nothing behind in /tmp; readiness is the file
        # appearing, so an old one goes first.
        tmp = None
        pidfile = os.path.join(path, PIDFILE_NAME)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pidfile)
    argv = nbdkit_command(str(location), socket=sock, port=port, bind=(bind or DEFAULT_BIND) if port else None,
                          readonly=readonly, pidfile=pidfile,
                          tls_certificates=tls.path if tls is not None and tls.kind == "x509" else None,
                          tls_psk=tls.path if tls is not None and tls.kind == "psk" else None,
                          ceph_conf=location.conf if rados else None,
                          ceph_id=location.client_id if rados else None, break_lock=break_lock)
    stopping = []
    proc = None

    def stop(signum, _frame):
        stopping.append(time.monotonic())
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    # Handlers first: a Ctrl-C right after the start must still stop nbdkit cleanly.
    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)
    except BaseException:
        for s, h in old.items():
            signal.signal(s, h)
        _remove_pidfile(tmp, pidfile)
        raise
    if stopping:
        proc.send_signal(signal.SIGTERM)
    try:
        _wait_ready(proc, pidfile, path, readonly, stopping)
        if proc.poll() is None and not stopping:
            _announce(path, sock, port, bind or DEFAULT_BIND, readonly, proc.pid, tls, as_json, shown=shown,
                      disk=disk)
        code = _wait(proc, stopping, path, readonly)
    finally:
        if proc.poll() is None:
            stopping.append(time.monotonic())
            proc.send_signal(signal.SIGTERM)
            _wait(proc, stopping, path, readonly)
        for s, h in old.items():
            signal.signal(s, h)
        if sock is not None:
            _remove_socket(sock)
        if not readonly:
            _remove_stale_control(path)
        _remove_pidfile(tmp, pidfile)
    if code < 0:
        raise VdiskError(f"nbdkit was killed by signal {-code}; writes since the last flush may be lost")
    if code:
        sys.exit(code)   # nbdkit or the plugin already said why on stderr
    if as_json:
        click.echo(json.dumps({"event": "stopped", "disk": shown}))
    else:
        click.echo(f"stopped serving {shown}")


def _remove_pidfile(tmp, pidfile: str):
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pidfile)


def _refuse_if_served(path: str):
    from vdisk.control.client import find_server
    live = find_server(path)
    if live is not None:
        owner = live.owner
        live.close()
        raise Busy(f"disk {path} is already served by {owner}")
    lock = os.path.join(path, "lock")
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        raise Busy(f"disk {path} is in use by PID {pid}") from None
    finally:
        os.close(fd)   # releases the probe; nbdkit takes the lock for real


def _prepare_socket_path(sock: str):
    from vdisk.control import unixsock
    if len(os.fsencode(sock)) > unixsock.MAX_PATH:
        raise InvalidArgument(f"socket path {sock} is longer than the {unixsock.MAX_PATH} bytes a unix "
                              f"socket allows; choose a shorter one with --socket")
    if not os.path.isdir(os.path.dirname(sock)):
        raise NotFound(f"directory {os.path.dirname(sock)} does not exist")
    try:
        st = os.lstat(sock)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise InvalidArgument(f"{sock} exists and is not a socket")
    if unixsock.answers(sock):
        raise Busy(f"another server is listening on {sock}")
    os.unlink(sock)   # stale: nbdkit never removes its socket


def _remove_socket(sock: str):
    try:
        if stat.S_ISSOCK(os.lstat(sock).st_mode):
            os.unlink(sock)
    except FileNotFoundError:
        pass


def _wait_ready(proc, pidfile: str, path: str, readonly: bool, stopping: list):
    """Until nbdkit serves (its pidfile exists, and the control socket answers
    for a writable disk: the plugin opens the disk in after_fork) or exits."""
    from vdisk.control import unixsock
    from vdisk.control.protocol import SOCKET_NAME
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None and not stopping:
        if os.path.exists(pidfile) and (readonly or unixsock.answers(os.path.join(path, SOCKET_NAME))):
            return
        time.sleep(0.05)
    if proc.poll() is None and not stopping:
        raise VdiskError(f"nbdkit did not become ready within {READY_TIMEOUT:.0f} s")


def _wait(proc, stopping: list, path: str, readonly: bool) -> int:
    """nbdkit's exit status (0 when it was stopped on purpose).

    Serving lasts until a signal. nbdkit then stops accepting, but exits only
    when its clients disconnect, which a kernel nbd-client never does. So
    after CLIENT_GRACE seconds the disk is flushed and closed through the
    control socket (the plugin fails every request after that) and then
    nbdkit is killed: nothing acknowledged is lost. If the control socket is
    already gone, nbdkit is in its own final flush; it is left to finish.
    """
    while True:
        try:
            return proc.wait(timeout=0.25)
        except subprocess.TimeoutExpired:
            pass
        if not stopping:
            continue
        waited = time.monotonic() - stopping[0]
        if waited > CLIENT_GRACE and (readonly or _close_disk_over_control(path)):
            proc.kill()
            proc.wait()
            _remove_stale_control(path)
            return 0
        if waited > STOP_TIMEOUT:
            proc.kill()
            proc.wait()
            _remove_stale_control(path)
            click.echo(f"vdisk: error: nbdkit did not stop within {STOP_TIMEOUT:.0f} s; killed it; writes "
                       f"since the clients' last flush may be lost", err=True)
            return 1


def _close_disk_over_control(path: str) -> bool:
    """True once the server has flushed and closed the disk at our request."""
    from vdisk.control.client import find_server
    try:
        live = find_server(path)
        if live is None:
            return False
        with live:
            live.shutdown()
    except VdiskError:
        return False
    click.echo(f"nbdkit did not exit within {CLIENT_GRACE:.0f} s (clients still connected): "
               f"flushed and closed the disk, stopping nbdkit", err=True)
    return True


def _remove_stale_control(path: str):
    from vdisk.control import unixsock
    from vdisk.control.client import socket_path
    control = socket_path(path)
    if os.path.exists(control) and not unixsock.answers(control):
        _remove_socket(control)


def _announce(path, sock, port, bind, readonly, pid, tls, as_json=False, shown=None, disk=None):
    names = _snapshot_names(path, readonly, disk)
    shown = shown or path
    mode = "read-only" if readonly else "read-write"
    secure = tls is not None
    if as_json:
        # One line per event (JSON Lines): a script reads the first line to
        # know it serves, and the next when it stopped.
        exports = [{"name": "", "snapshot": None, "readonly": readonly,
                    "uri": export_uri(sock, port, bind, "", secure)}]
        exports += [{"name": n, "snapshot": n, "readonly": True, "uri": export_uri(sock, port, bind, n, secure)}
                    for n in names]
        click.echo(json.dumps({"event": "serving", "disk": shown, "pid": pid, "readonly": readonly,
                               "socket": sock, "port": port, "bind": bind if port else None,
                               "tls": None if tls is None else tls.kind, "exports": exports},
                              ensure_ascii=False))
        sys.stdout.flush()
        return
    click.echo(f"serving {shown} over NBD (nbdkit PID {pid}); stop with Ctrl-C")
    rows = [(export_uri(sock, port, bind, "", secure), f"running point ({mode})")]
    rows += [(export_uri(sock, port, bind, n, secure), f"snapshot {n} (read-only)") for n in names]
    width = max(len(u) for u, _ in rows)
    for uri, what in rows:
        click.echo(f"  {uri:<{width}}  {what}")
    if secure:
        click.echo(f"{tls.describe()}; plaintext clients are refused")
    click.echo("snapshots taken while serving become exports under their own names")
    sys.stdout.flush()


def _snapshot_names(path, readonly, disk=None) -> list[str]:
    from vdisk.control.client import find_server
    try:
        live = None if readonly else find_server(path)
        if live is not None:
            with live:
                return [s.name for s in live.snapshots(exclusive=False)]
        from vdisk import Disk
        with Disk.open(resolve(disk) if disk is not None else path, readonly=True) as d:
            return [s.name for s in d.snapshots(exclusive=False)]
    except VdiskError as e:
        click.echo(f"vdisk: warning: cannot list snapshots: {e}", err=True)
        return []


def export_uri(sock: str | None, port: int | None, bind: str, name: str, tls: bool = False) -> str:
    """The NBD URI of export ``name`` (see the NBD URI specification)."""
    quoted = urllib.parse.quote(name, safe="")
    scheme = "nbds" if tls else "nbd"
    if sock is not None:
        return f"{scheme}+unix:///{quoted}?socket={urllib.parse.quote(sock, safe='/')}"
    host = f"[{bind}]" if ":" in bind else bind
    return f"{scheme}://{host}:{port}/{quoted}"
