"""The main job behind ``./dev demo``: make a demo disk and show how to use it.

It creates ``demo/demo.vdisk`` (1 GiB by default) unless it exists. Serving it
over NBD joins this flow when ``vdisk serve`` lands (issue: NBD export); until
then it prints what the disk holds and the commands to try.
"""

from __future__ import annotations

import os
import sys

from vdisk.errors import VdiskError
from vdisk.units import format_size, parse_size


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    size = parse_size(argv[0]) if argv else 1 << 30
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "demo", "demo.vdisk")
    from vdisk import Disk
    try:
        if os.path.exists(path):
            d = Disk.open(path)
            print(f"using the existing demo disk {path}")
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            d = Disk.create(path, size)
            d.write(0, b"hello from vdisk\n".ljust(4096, b"\0"))
            d.create_snapshot("first")
            print(f"created the demo disk {path} ({format_size(size)}) with snapshot 'first'")
        with d:
            info = d.info()
    except VdiskError as e:
        print(f"vdisk: error: {e}", file=sys.stderr)
        return e.exit_code
    vdisk = os.path.join(root, ".venv", "bin", "vdisk")
    print(f"  size {format_size(info['size'])}, allocated {format_size(info['allocated_bytes'])}, "
          f"{len(info['snapshots'])} snapshot(s)")
    print("\nNBD serving is not built yet (see the open NBD issue); meanwhile try:")
    print(f"  {vdisk} info {path}")
    print(f"  {vdisk} snapshot create {path} mysnap")
    print(f"  {vdisk} snapshot list {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
