"""SIGKILL a writer at random moments; the disk must come back consistent.

A child process (crash_child.py) applies a deterministic stream of writes,
zeroes, flushes, snapshot creations, reverts and deletes to one disk and
reports each commit on stdout. The test kills it after a random delay,
reopens the disk for writing (the kill must have released the lock), and
replays the stream from the seed:

* Commits are atomic and each commit-making operation commits once, so the
  disk must be exactly the state after the last reported commit, or the state
  after the next commit operation (done but killed before it was reported).
  Nothing in between: no write is durable without a commit.
* Every snapshot of that state exists and reads exactly its model; no other
  snapshot exists.
* Space accounting and the B+tree checker are clean.

The same disk carries on through every iteration, so later children start
from whatever the earlier ones left, snapshots included. A failure message
ends with the history of (seed, last reported op, op whose state was found)
per iteration: applying each seed's stream up to that op, in one process,
rebuilds the failing disk.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from vdisk import Disk

from . import crash_child
from .accounting import consistency

SIZE = 4 << 20
BS = 4096
# Iteration i runs seed 1000 + i and sleeps the i-th draw of a fixed rng, so a
# shorter run is the same iterations as a longer one, cut. The default (25
# or 12 s, about 0.4 s an iteration) keeps the suite's wall time in hand;
# VDISK_TORTURE_FULL=1 runs 50 or 20 s (the default until the suite needed
# the time, docs/RELIABILITY.md), VDISK_CRASH_ITERATIONS=100
# VDISK_CRASH_SECONDS=40 (the default before that) or more a longer search.
_FULL = bool(os.environ.get("VDISK_TORTURE_FULL"))
ITERATIONS = int(os.environ.get("VDISK_CRASH_ITERATIONS") or (50 if _FULL else 25))
BUDGET_S = float(os.environ.get("VDISK_CRASH_SECONDS") or (20 if _FULL else 12))
MIN_ITERATIONS = 15

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "crash_child.py")


def _diff(a: bytes, b: bytes) -> str:
    blocks = [i for i in range(0, len(a), BS) if a[i:i + BS] != b[i:i + BS]]
    return f"{len(blocks)} blocks differ, first at byte {blocks[0] if blocks else None}"


def _expected_states(seed, parents, running_parent, model, snaps, last):
    """States after op ``last`` (-1: before any) and after the next commit op.

    Also returns the op stream's list of ops up to there, to check the
    child's report against.
    """
    ops = []
    m, s = bytearray(model), dict(snaps)
    gen = crash_child.operations(seed, SIZE, BS, parents, running_parent)
    for i in range(last + 1):
        op = next(gen)
        ops.append(op)
        m = crash_child.apply_to_model(op, m, s)
    at_last = (bytes(m), dict(s))
    while True:
        op = next(gen)
        ops.append(op)
        m = crash_child.apply_to_model(op, m, s)
        if op[0] in crash_child.COMMIT_OPS:
            return at_last, (bytes(m), dict(s)), ops


def _check_report(lines, ops):
    for line in lines:
        word, *rest = line.split()
        i = int(rest[-1])
        op = ops[i]
        want = {"flushed": "flush"}.get(word, word)
        assert op[0] == want, f"child reported {line!r} but op {i} of the stream is {op[0]}"
        if len(rest) == 2:
            assert op[1] == rest[0], f"child reported {line!r} but op {i} names {op[1]}"


@pytest.mark.slow
def test_sigkill_at_random_moments(scratch):
    path = os.path.join(scratch, "disk")
    Disk.create(path, SIZE, BS).close()
    model = bytes(SIZE)
    snaps: dict[str, bytes] = {}
    parents, running_parent = {}, None
    rng = random.Random(20240611)
    started = time.monotonic()
    stats = {"iterations": 0, "after_commit": 0, "unreported_commit": 0, "snapshots": 0}
    # (seed, index of the last reported commit, index of the state found):
    # enough to replay the whole run in one process when something fails.
    history: list[tuple[int, int, int]] = []

    for iteration in range(ITERATIONS):
        if iteration >= MIN_ITERATIONS and time.monotonic() - started > BUDGET_S:
            break
        seed = 1000 + iteration
        child = subprocess.Popen([sys.executable, CHILD, path, str(seed)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            time.sleep(rng.uniform(0.03, 0.45))
            exited = child.poll()
            child.send_signal(signal.SIGKILL)
            out, err = child.communicate(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert exited is None, f"child {seed} died by itself (rc {exited}):\n{err.decode()[-3000:]}"
        assert child.returncode == -signal.SIGKILL
        text = out.decode()
        lines = text.splitlines()
        if not text.endswith("\n") and lines:
            lines.pop()                    # a line cut by the kill
        last = int(lines[-1].split()[-1]) if lines else -1

        (m_last, s_last), (m_next, s_next), ops = _expected_states(
            seed, parents, running_parent, model, snaps, last)
        _check_report(lines, ops)

        d = Disk.open(path)                # Busy here: the kill did not release the lock
        try:
            # A deletion the kill interrupted resumes in the background;
            # until it ends its blocks count as leaks.
            assert d.wait_maintenance(60)
            got = d.read(0, SIZE)
            names = {s.name for s in d.snapshots(exclusive=False)}
            if got == m_last and names == set(s_last):
                model, snaps = m_last, s_last
                history.append((seed, last, last))
            elif got == m_next and names == set(s_next):
                model, snaps = m_next, s_next
                stats["unreported_commit"] += 1
                history.append((seed, last, len(ops) - 1))
            else:
                pytest.fail(f"iteration {iteration} (seed {seed}, killed after op {last}): the disk is "
                            f"neither the last reported commit ({_diff(got, m_last)}, snapshots "
                            f"{sorted(names)} vs {sorted(s_last)}) nor the next one "
                            f"({_diff(got, m_next)}, snapshots vs {sorted(s_next)}); history {history}")
            for name, want in snaps.items():
                assert d.open_snapshot(name).read(0, SIZE) == want, (
                    f"iteration {iteration}: snapshot {name} does not read as when it was taken; "
                    f"history {history}")
            probs = consistency(d)
            assert not probs, f"iteration {iteration} (seed {seed}): {probs}; history {history}"
            parents, running_parent = crash_child.family(d)
        finally:
            d.close()
        stats["iterations"] += 1
        stats["after_commit"] += last >= 0
        stats["snapshots"] = max(stats["snapshots"], len(snaps))

    print("crash test:", stats)
    # The kills must have landed at interesting moments, not only at start-up.
    assert stats["after_commit"] >= stats["iterations"] // 3, stats
