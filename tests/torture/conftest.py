"""Shared settings of the torture suite (power cuts, faults, load, bad input).

Every torture test is bounded twice, by a count and by time, and is seeded:

* ``VDISK_TORTURE_MINUTES`` - wall-clock budget of the whole suite. Unset (CI
  and ``./dev test``), each test runs its short fixed-seed version; set
  (``./dev torture --minutes N``), the budget is shared out by each test's
  ``weight``.
* ``VDISK_TORTURE_SEED`` - base seed (default 1); a failure prints the seed
  that reproduces it.
* ``VDISK_TORTURE_REPORT`` - a file that collects each test's figures as JSON
  lines (power cuts, faults injected, operations, bytes checked, losses);
  ``./dev torture`` turns them into the table of docs/RELIABILITY.md.

The suite version: a plain run (``./dev test``, CI, pytest: neither
``VDISK_TORTURE_MINUTES`` nor ``VDISK_TORTURE_REPORT`` set) runs only the
first ``suite_share`` of the short version of the few longest tests (the
same seeds and rounds, cut: so a failure there reproduces in the short
version), to keep the whole suite's wall time in hand. ``./dev torture``
(it always sets ``VDISK_TORTURE_REPORT``) runs the short version whole, as
does any run with ``VDISK_TORTURE_FULL=1``.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field

import pytest

# Sum of the weights of every torture test (grep 'weight=' tests/torture);
# a test's share of a long run is weight / TOTAL_WEIGHT of the budget, so
# `--minutes N` takes about N minutes, plus the fixed cases.
TOTAL_WEIGHT = 7.45


@dataclass
class Budget:
    """How long and how many rounds one torture test may run."""

    seconds: float
    max_rounds: int
    seed: int
    long_run: bool
    started: float = field(default_factory=time.monotonic)
    share: float = 1.0      # of the short version this run takes (the suite version: suite_share)

    def rounds(self):
        """Round numbers until the count or the time runs out (at least one)."""
        for i in range(self.max_rounds):
            if i and time.monotonic() - self.started >= self.seconds:
                return
            yield i

    def left(self) -> float:
        return max(0.0, self.seconds - (time.monotonic() - self.started))


@pytest.fixture
def torture_budget(request):
    """``torture_budget(short_seconds, short_rounds, weight=1, suite_share=1)`` -> Budget.

    ``suite_share``: the part of the short version (its seconds and its
    rounds, rounded up) a plain run takes (see the module's docstring);
    the Budget's ``share`` says what it got, for counts other than rounds."""
    minutes = os.environ.get("VDISK_TORTURE_MINUTES")
    seed = int(os.environ.get("VDISK_TORTURE_SEED", "1"))
    whole = bool(os.environ.get("VDISK_TORTURE_REPORT") or os.environ.get("VDISK_TORTURE_FULL"))

    def make(short_seconds: float, short_rounds: int, weight: float = 1, suite_share: float = 1) -> Budget:
        if minutes:
            seconds = float(minutes) * 60 * weight / TOTAL_WEIGHT
            return Budget(seconds, 10**9, seed, True)
        if not whole and suite_share < 1:
            return Budget(short_seconds * suite_share, max(1, math.ceil(short_rounds * suite_share)), seed, False,
                          share=suite_share)
        return Budget(short_seconds, short_rounds, seed, False)
    return make


@pytest.fixture
def torture_figures(request):
    """A dict the test fills with its figures; reported at the end of the test."""
    figures: dict = {}
    yield figures
    if not figures:
        return
    line = {"test": request.node.nodeid, **figures}
    report = os.environ.get("VDISK_TORTURE_REPORT")
    if report:
        with open(report, "a") as f:
            f.write(json.dumps(line) + "\n")
    request.node.user_properties.append(("figures", line))
    print("\nfigures:", json.dumps(figures))


# ---------------------------------------------------------------- lazy FS
# Power-cut and fault tests run the engine on lazyfs (lazyfs.py), a FUSE file
# system that keeps unsynced data in memory and can cut the power.


@pytest.fixture
def lazyfs(tmp_path):
    """A mounted LazyMount over ``tmp_path/backing`` at ``tmp_path/mnt``;
    unmounted (and its server killed if need be) at teardown."""
    import lazyfs as lz
    lacking = lz.missing()
    if lacking:
        # ./dev setup installs fuse3; in CI a missing piece is a failure, not a skip.
        if os.environ.get("CI"):
            pytest.fail(f"lazyfs needs {', '.join(lacking)}")
        pytest.skip(f"lazyfs needs {', '.join(lacking)}")
    m = lz.LazyMount(str(tmp_path / "backing"), str(tmp_path / "mnt"), str(tmp_path / "lazyfs.sock"),
                     seed=int(os.environ.get("VDISK_TORTURE_SEED", "1")))
    try:
        m.mount()
        yield m
    finally:
        m.close()


@pytest.fixture
def processes():
    """Register each subprocess.Popen a test starts; every one still alive at
    teardown is killed (by its PID) and reaped, whatever the test did."""
    procs: list = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        try:
            p.wait(timeout=30)
        except Exception:
            pass
