"""One ``vdisk`` command, one connection to the cluster (issue 16).

A command looks a rados disk up more than once (the state directory where
a server's control socket would be, then the disk; resize reads before it
writes). Each new connection takes fresh client ids from the monitor, which
hands them out in order, so the ids a probe client gets before and after a
command (run as a subprocess) say how many connections it made.
"""

from __future__ import annotations

import pytest

from cli.util import run_proc


def _next_id(ceph) -> int:
    r = ceph.client(timeout=30)
    try:
        return r.get_instance_id()
    finally:
        r.shutdown()


def _connections(ceph, *args) -> int:
    first, second = _next_id(ceph), _next_id(ceph)
    step = second - first                                 # the ids one connection takes
    r = run_proc("--ceph-conf", ceph.conf, *args, timeout=60)
    assert r.returncode == 0, r.stderr
    after = _next_id(ceph)
    assert (after - second) % step == 0, (first, second, after)
    return (after - second) // step - 1


@pytest.mark.parametrize("args", [["info", "D"], ["snapshot", "list", "D"], ["snapshot", "create", "D", "s"],
                                  ["resize", "D", "64M"], ["verify", "D"], ["delete", "D", "--yes"]],
                         ids=lambda a: " ".join(a[:2]))
def test_a_command_connects_to_the_cluster_once(ceph, prefix, args):
    disk = f"rados:{ceph.pool}/{prefix}"
    r = run_proc("--ceph-conf", ceph.conf, "create", disk, "--size", "16M")
    assert r.returncode == 0, r.stderr
    assert _connections(ceph, *[disk if a == "D" else a for a in args]) == 1
