"""Shared test settings.

Hypothesis profiles, picked by the environment variable ``HYPOTHESIS_PROFILE``
(default: ``ci`` when ``CI`` is set, else ``default``):

* ``default`` - a modest random search for a quick local run;
* ``ci`` - derandomized (the same examples every run, no example database),
  so a red CI run is reproducible and a green one is not luck;
* ``nightly`` - many more examples and longer state-machine runs.

The costliest state machines run a share of the profile's examples: a
quarter in ``default`` and ``ci`` (25 each), and in ``nightly`` one half
(tests/btree/test_stateful.py, 500) and two fifths (tests/engine/test_model.py,
400), as they did before ``./dev test`` needed the time.

Every profile has ``deadline=None``: LMDB commits fsync, and their latency on
a loaded CI machine says nothing about correctness.

Bytecode of the child processes: the suite starts about a thousand Python
processes (the CLI, servers, crash children, lazyfs), each importing most of
vdisk. Where ``PYTHONDONTWRITEBYTECODE`` is set, each of them compiled every
module it imported from source (~0.1-0.2 s a process), so for the children
the suite unsets it and points ``PYTHONPYCACHEPREFIX`` at a directory of its
own, removed at the end: they share compiled modules, and nothing is
written into the source tree. A ``PYTHONPYCACHEPREFIX`` already set is left
as it is; this process keeps its own setting.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

if os.environ.get("PYTHONDONTWRITEBYTECODE") and not os.environ.get("PYTHONPYCACHEPREFIX"):
    try:
        _PYCACHE = tempfile.mkdtemp(prefix="vdisk-tests-pycache-")
    except OSError:
        pass                      # no scratch space: the children compile as before
    else:
        atexit.register(shutil.rmtree, _PYCACHE, True)
        del os.environ["PYTHONDONTWRITEBYTECODE"]
        os.environ["PYTHONPYCACHEPREFIX"] = _PYCACHE

from hypothesis import HealthCheck, settings  # noqa: E402

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])

settings.register_profile("default", max_examples=100, stateful_step_count=50, **_COMMON)
settings.register_profile("ci", max_examples=100, stateful_step_count=50, derandomize=True,
                          database=None, print_blob=True, **_COMMON)
settings.register_profile("nightly", max_examples=1000, stateful_step_count=100, **_COMMON)

settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "default"))
