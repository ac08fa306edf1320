"""NBD front end: the nbdkit plugin (``plugin.py``) and how to start it.

``plugin.py`` is not imported by vdisk: nbdkit's python plugin runs it as a
script inside nbdkit's embedded interpreter (Debian's Python 3.11). This
module gives the rest of vdisk (``vdisk serve``, the demo, tests, the
benchmark) the plugin's path and the one way to start nbdkit with it.

Two things make that start robust (docs/NBD.md has the story):

* ``sitedir=`` tells the plugin which site-packages holds vdisk and its
  dependencies: the one of the Python running this code. nbdkit's embedded
  interpreter knows only the system's paths.
* nbdkit gets the environment with the virtual environment taken out
  (``VIRTUAL_ENV``, ``PYTHONHOME``, ``PYTHONPATH``, the venv's ``bin/`` on
  ``PATH``): an embedded interpreter that finds a venv's ``python3`` first may
  load the venv's standard library and fail on compiled modules.
"""

from __future__ import annotations

import os
import sys
import sysconfig

PLUGIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugin.py")

NBDKIT = "nbdkit"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def sitedir() -> str:
    """The site-packages directory of this interpreter (where vdisk's dependencies are)."""
    return sysconfig.get_paths()["purelib"]


def nbdkit_env(base: dict | None = None) -> dict:
    """``base`` (default: this process's environment) without any virtual environment."""
    env = dict(os.environ if base is None else base)
    venvs = {os.path.realpath(p) for p in (sys.prefix, env.get("VIRTUAL_ENV")) if p}
    venvs.discard(os.path.realpath(sys.base_prefix))
    for key in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONEXECUTABLE"):
        env.pop(key, None)
    keep = []
    for entry in env.get("PATH", SYSTEM_PATH).split(os.pathsep):
        real = os.path.realpath(entry) if entry else entry
        if entry and not any(real == v or real.startswith(v + os.sep) for v in venvs):
            keep.append(entry)
    env["PATH"] = os.pathsep.join(keep) or SYSTEM_PATH
    return env


def nbdkit_command(disk: str, *, socket: str | None = None, port: int | None = None,
                   bind: str | None = None, readonly: bool = False, pidfile: str | None = None,
                   control: bool | None = None, tls_certificates: str | None = None,
                   tls_psk: str | None = None, nbdkit_args: tuple = (), ceph_conf: str | None = None,
                   ceph_id: str | None = None, break_lock: bool = False) -> list[str]:
    """argv for a foreground nbdkit serving ``disk`` with this plugin.

    TCP listens on ``bind``, by default 127.0.0.1: nbdkit's own default is
    every interface. Either TLS credential makes TLS required (``--tls=require``:
    with ``on`` a client could choose plaintext). A ``rados:POOL/NAME`` disk
    is opened by the plugin with ``ceph_conf`` and ``ceph_id`` (``break_lock``:
    fencing the holder first).
    """
    argv = [NBDKIT, "-f", "--exit-with-parent"]
    if socket is not None:
        argv += ["-U", socket]
    else:
        argv += ["-p", str(port if port is not None else 10809), "-i", bind or "127.0.0.1"]
    if tls_certificates is not None and tls_psk is not None:
        raise ValueError("tls_certificates and tls_psk exclude each other")
    if tls_certificates is not None:
        argv += ["--tls=require", f"--tls-certificates={os.path.abspath(tls_certificates)}"]
    elif tls_psk is not None:
        argv += ["--tls=require", f"--tls-psk={os.path.abspath(tls_psk)}"]
    if readonly:
        argv.append("-r")
    if pidfile:
        argv += ["-P", pidfile]
    argv += list(nbdkit_args)
    rados = disk.startswith("rados:")
    argv += ["python", PLUGIN, f"disk={disk if rados else os.path.abspath(disk)}", f"sitedir={sitedir()}"]
    if ceph_conf:
        argv.append(f"ceph_conf={os.path.abspath(ceph_conf)}")
    if ceph_id:
        argv.append(f"ceph_id={ceph_id}")
    if break_lock:
        argv.append("break_lock=on")
    if readonly:
        argv.append("readonly=on")
    if control is not None:
        argv.append(f"control={'on' if control else 'off'}")
    return argv
