"""What the benchmarks share: the machine they ran on, probes, running fio."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess


def machine() -> str:
    """Cores, CPU model, memory and Python version, on one line."""
    cpu = "unknown cpu"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    return f"{os.cpu_count()} cores, {cpu}, {mem:.0f} GiB, Python {platform.python_version()}"


ENGINE_PATHS = ("vdisk", "btree", "snapshots", "nbdplugin", "cli", "control")


def code_version() -> str:
    """The commit a benchmark runs on, and which engine files differ from it.

    Other work may change the engine in the same tree while a benchmark
    runs; the figures belong to this state, not to the commit alone.
    """
    import subprocess
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "-C", repo, "status", "--short", "--", *ENGINE_PATHS],
                                capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown commit"
    dirty = [line.strip() for line in status.splitlines() if line.strip()]
    return f"commit {head or '?'}" + (f", engine tree dirty: {'; '.join(dirty)}" if dirty else ", engine tree clean")


def socket_answers(path: str) -> bool:
    """Whether a server accepts connections on the unix socket ``path`` yet."""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(1)
            s.connect(path)
        return True
    except OSError:
        return False


def fio_job(argv: list[str], timeout: float, env=None, what: str = "fio") -> dict:
    """Run fio (``argv``, with ``--output-format=json``) and return its one job's figures.

    fio may print warnings before its JSON, and reports some failures only
    in the job's ``error`` field: both are handled here, for every bench.
    """
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                       stdin=subprocess.DEVNULL)
    if r.returncode:
        raise RuntimeError(f"{what} failed: {r.stderr[-2000:]}")
    job = json.loads(r.stdout[r.stdout.index("{"):])["jobs"][0]
    if job.get("error"):
        raise RuntimeError(f"{what} job error {job['error']}: {r.stderr[-2000:]}")
    return job
