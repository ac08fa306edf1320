"""A writer of a rados: disk in its own process, driven line by line on stdin.

argv: conf pool name client_id [break]
Opens ``rados:POOL/NAME`` for writing as Ceph client ``client_id`` (with
``break``: taking the lock over), prints ``open``, then for each line:

``write OFFSET LENGTH SEED``  Disk.write of tests' pattern(SEED, LENGTH)
``flush``                     Disk.flush
``close``                     Disk.close, then exit

and answers ``ok`` or ``error NAME: message``, so a test can stop it (SIGKILL,
SIGSTOP) between two lines and see what each call did.
"""

import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from vdisk import Disk  # noqa: E402
from vdisk.location import RadosLocation  # noqa: E402


def pattern(seed: int, length: int) -> bytes:
    return random.Random(seed).randbytes(length).replace(b"\0", b"\1")


conf, pool, name, client = sys.argv[1:5]
loc = RadosLocation(pool, name, conf, client, timeout=20)
d = Disk.open(loc, break_lock=len(sys.argv) > 5 and sys.argv[5] == "break")
print("open", flush=True)
for line in sys.stdin:
    cmd, *args = line.split()
    try:
        if cmd == "write":
            off, n, seed = map(int, args)
            d.write(off, pattern(seed, n))
        elif cmd == "flush":
            d.flush()
        elif cmd == "close":
            d.close()
            print("ok", flush=True)
            break
        print("ok", flush=True)
    except Exception as e:
        print(f"error {type(e).__name__}: {e}".replace("\n", " "), flush=True)
