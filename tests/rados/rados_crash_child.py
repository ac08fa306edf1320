"""Makes commits to a RADOS node store until killed (tests/rados/test_store_rados.py).

argv: conf pool name first_commit last_commit step
``step`` is a crash hook point ("journal", "published", "applied") at which the
child kills itself with SIGKILL during its last commit, or "none". Small
journal parts and apply slices make every commit many objects and ops, so a
kill lands between them. Prints "done K" after commit K returned.
"""

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import rados_model  # noqa: E402

from vdisk import ceph as vceph  # noqa: E402
from vdisk.btree import store_rados  # noqa: E402

store_rados.PART_BYTES = 1500
store_rados.APPLY_BYTES = 1000

conf, pool, name, first, last, step = sys.argv[1:7]
first, last = int(first), int(last)
r = vceph.connect(conf, timeout=30)
io = r.open_ioctx(pool)
store = store_rados.RadosNodeStore(io, name)
assert store.meta_get(b"k") in (None, str(first - 1).encode()), store.meta_get(b"k")
for k in range(first, last + 1):
    if k == last and step != "none":
        def hook(at):
            if at == step:
                os.kill(os.getpid(), signal.SIGKILL)
        store.crash_hook = hook
    puts, meta = rados_model.batch(k)
    store.commit(puts, rados_model.deletes(k), meta)
    print(f"done {k}", flush=True)
