"""Fixtures of the RADOS tests: one real single-node Ceph cluster per session.

The cluster is tools/ceph_cluster.py's, the code behind ``./dev ceph``, started
in a scratch directory and stopped at the end of the session whatever the
tests did; its daemons also die with the test process if that is killed.
``./dev`` installs the Ceph packages; where they are missing (pytest run
by hand on a machine without them) the tests are skipped, except in CI,
where a missing package is a failure.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(_ROOT, "tools"))

import ceph_cluster  # noqa: E402

from vdisk import ceph as vceph  # noqa: E402


def _missing() -> str | None:
    for tool in ("ceph-mon", "ceph-osd"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (./dev setup installs it)"
    try:
        import rados  # noqa: F401
    except ImportError:
        return "the rados binding is not in this venv (./dev setup links python3-rados)"
    return None


@pytest.fixture(scope="session")
def ceph(tmp_path_factory):
    """The running cluster (``.conf``, ``.pool``, ``.restart_osd()``)."""
    why = _missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    cluster = ceph_cluster.Cluster(str(tmp_path_factory.mktemp("ceph")), store_bytes=4 << 30,
                                   die_with_parent=True)
    try:
        cluster.start(timeout=120)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session", autouse=True)
def runtime_dir():
    """rados disks' local state directories (vdisk.location.state_dir) in a
    scratch directory of the session, not /run/vdisk; children inherit it."""
    import tempfile
    d = tempfile.mkdtemp(prefix="vdisk-run-")
    old = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = d
    yield d
    if old is None:
        os.environ.pop("XDG_RUNTIME_DIR", None)
    else:
        os.environ["XDG_RUNTIME_DIR"] = old
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster_client(ceph):
    """One connected ``rados.Rados`` for the session."""
    r = ceph.client(timeout=30)
    yield r
    r.shutdown()


@pytest.fixture
def ioctx(cluster_client, ceph):
    io = cluster_client.open_ioctx(ceph.pool)
    yield io
    io.close()


@pytest.fixture
def prefix(request):
    """Object names no other test uses: the pool is shared by the session."""
    return "t" + hashlib.blake2b(request.node.nodeid.encode(), digest_size=6).hexdigest()


@pytest.fixture
def new_client(ceph):
    """``new_client()``: another connected client (another identity, for locks and fencing)."""
    made = []

    def make():
        r = ceph.client(timeout=30)
        made.append(r)
        return r

    yield make
    for r in made:
        try:
            r.shutdown()
        except Exception:
            pass


@pytest.fixture
def fence_now(ceph, new_client):
    """``fence_now(address)``: blocklist ``address`` and make the OSD enforce it before returning.

    vdisk.ceph.fence waits for the fencing client's own osdmap; the OSD takes
    the new map when an op carrying that epoch reaches it, which in vdisk is
    the lock break that follows (vdisk/location.py take_over). A test whose
    victim writes right after the fence sends that op itself: a stat from the
    fencing client (on the one OSD of the test cluster).
    """
    import rados

    def fence(address):
        fencer = new_client()
        vceph.fence(fencer, address, expire_seconds=600)
        io = fencer.open_ioctx(ceph.pool)
        try:
            io.stat("fence-now.epoch")
        except rados.ObjectNotFound:
            pass
        finally:
            io.close()
    return fence
