"""The main job behind ``./dev demo``: make a demo disk and serve it over NBD.

    ./dev demo [SIZE] [--exit]

1. Creates ``demo/demo.vdisk`` (1 GiB by default) with a snapshot ``first``,
   unless it exists.
2. Starts ``vdisk serve`` on it (a unix socket beside the disk).
3. Shows real clients at work: ``nbdinfo --list`` (the running point and a
   read-only export per snapshot), a ``qemu-io`` write, a snapshot taken
   through the CLI while the disk is served, ``qemu-img map`` of the new
   snapshot export, and its deletion (so repeated demos do not pile up).
4. Keeps serving until Ctrl-C when run from a terminal (so you can attach
   your own clients with the printed URIs); with ``--exit`` or without a
   terminal it stops the server and returns.

If the demo disk is already served (another ``./dev demo`` or ``vdisk serve``
runs), it only prints how to reach it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time

from vdisk.errors import VdiskError
from vdisk.units import format_size, parse_size

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BANNER_END = "snapshots taken while serving"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="./dev demo", description="Create a demo disk and serve it over NBD.")
    ap.add_argument("size", nargs="?", default="1G", help="size of a new demo disk (default 1G)")
    ap.add_argument("--exit", action="store_true", help="stop serving after the tour instead of waiting for Ctrl-C")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    path = os.path.join(ROOT, "demo", "demo.vdisk")
    vdisk = _vdisk_command()
    try:
        size = parse_size(args.size)
        _ensure_disk(path, size)
        from vdisk.control.client import find_server
        live = find_server(path)
    except VdiskError as e:
        print(f"vdisk: error: {e}", file=sys.stderr)
        return e.exit_code
    if live is not None:
        live.close()
        print(f"{path} is already served ({live.owner}); connect with:")
        print(f"  nbdinfo --list 'nbd+unix:///?socket={os.path.join(path, 'nbd.sock')}'")
        return 0

    server = subprocess.Popen(vdisk + ["serve", path], stdout=subprocess.PIPE, text=True)
    try:
        banner = _read_banner(server)
        if banner is None:
            return server.wait() or 1
        sock = os.path.join(path, "nbd.sock")
        uri = f"nbd+unix:///?socket={sock}"
        print("\n".join(banner))
        print()
        _show(["nbdinfo", "--list", uri], keep=("export=", "description:", "export-size:", "is_read_only:"))
        _show(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 256k", "-c", "flush", uri])
        name = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
        _show(vdisk + ["snapshot", "create", path, name])
        _show(["qemu-img", "map", "-f", "raw", f"nbd+unix:///{name}?socket={sock}"])
        _show(vdisk + ["snapshot", "list", path])
        _show(vdisk + ["snapshot", "delete", path, name])
        print("\nTry it yourself while this runs, e.g.:")
        print(f"  qemu-io -f raw -c 'read -v 1M 64' '{uri}'")
        print(f"  nbdcopy '{uri}' /tmp/demo.raw          # copy the disk out (holes stay holes)")
        print(f"  {' '.join(vdisk)} snapshot create {path} mysnap   # goes through the server")
        print(f"  qemu-system-x86_64 ... -drive file=nbd+unix:///?socket={sock},format=raw")
        print("More in docs/NBD.md.")
        if args.exit or not sys.stdin.isatty():
            print("\nstopping the server (run `./dev demo` from a terminal to keep it serving until Ctrl-C)")
            server.send_signal(signal.SIGTERM)
        else:
            print("\nserving until Ctrl-C ...")
        return _wait(server)
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            _wait(server)


def _vdisk_command() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "vdisk")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "vdisk.cli.main"]


def _ensure_disk(path: str, size: int):
    from vdisk import Disk
    if os.path.exists(path):
        print(f"using the existing demo disk {path}")
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with Disk.create(path, size) as d:
        d.write(0, b"hello from vdisk\n".ljust(4096, b"\0"))
        d.create_snapshot("first")
    print(f"created the demo disk {path} ({format_size(size)}) with snapshot 'first'")


def _read_banner(server) -> list[str] | None:
    lines = []
    for line in server.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith(BANNER_END):
            return lines
    return None


def _show(argv: list[str], keep: tuple = ()):
    shown = [os.path.basename(argv[0]) if argv[0].startswith(ROOT) else argv[0]] + argv[1:]
    print(f"$ {shlex.join(shown)}")
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    out = r.stdout.rstrip("\n").splitlines()
    if keep:
        out = [line for line in out if line.strip().startswith(keep)]
    for line in out:
        print(f"  {line}")
    if r.returncode:
        print(f"  (exit {r.returncode}) {r.stderr.strip()}")
    print()


def _wait(server) -> int:
    while True:
        try:
            code = server.wait()
            break
        except KeyboardInterrupt:
            continue   # Ctrl-C reached vdisk serve too; it is stopping
    if server.stdout is not None:
        for line in server.stdout:
            print(line.rstrip("\n"))
    return code


if __name__ == "__main__":
    sys.exit(main())
