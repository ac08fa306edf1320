"""A writer of a rados: disk in its own process, driven line by line on stdin.

argv: conf pool name client_id [break]
Opens ``rados:POOL/NAME`` for writing as Ceph client ``client_id`` (with
``break``: taking the lock over), prints ``open``, then for each line:

``write OFFSET LENGTH SEED``  Disk.write of tests' pattern(SEED, LENGTH)
``flush``                     Disk.flush
``close``                     Disk.close, then exit
``run SEED COUNT``            COUNT writes of run_write(SEED, k), a flush after every
                              4th, printing ``flushed K`` after each (to be SIGKILLed)

and answers ``ok`` or ``error NAME: message``, so a test can stop it (SIGKILL,
SIGSTOP) between two lines and see what each call did.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from rados_disk_writes import pattern, run_write  # noqa: E402

from vdisk import Disk  # noqa: E402
from vdisk.location import RadosLocation  # noqa: E402

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
        elif cmd == "run":
            seed, count = map(int, args)
            for k in range(count):
                off, data = run_write(seed, k)
                d.write(off, data)
                if k % 4 == 3:
                    d.flush()
                    print(f"flushed {k}", flush=True)
        elif cmd == "flush":
            d.flush()
        elif cmd == "close":
            d.close()
            print("ok", flush=True)
            break
        print("ok", flush=True)
    except Exception as e:
        print(f"error {type(e).__name__}: {e}".replace("\n", " "), flush=True)
