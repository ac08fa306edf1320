"""Helpers for the conversion tests: qemu-made chains, and the vdisk CLI
run on them (in this process, or as a real subprocess where exit codes,
stderr and signals must be seen as a shell sees them).

Every image is made by the qemu tools themselves (``qemu-img create -b ...
-F ...``, written with ``qemu-io``), never by hand, and every comparison is
``qemu-img compare``, so the tests check vdisk against qemu, not against
itself.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

from click.testing import CliRunner

from vdisk.cli.main import main

KiB = 1 << 10
MiB = 1 << 20
BS = 4096
TOOLS = ("qemu-img", "qemu-io", "qemu-nbd")


def missing_tools() -> list[str]:
    out = [t for t in TOOLS if shutil.which(t) is None]
    try:
        import nbd  # noqa: F401
    except ImportError:
        out.append("python3-libnbd")
    return out


# ------------------------------------------------------------------ vdisk

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def documented_fields(block: str) -> set[str]:
    """The fields docs/CLI.md lists in its ``json-fields BLOCK`` block (the
    documentation is the contract, as in tests/cli/test_json.py)."""
    import re
    with open(os.path.join(ROOT, "docs", "CLI.md")) as f:
        text = f.read()
    m = re.search(r"```json-fields %s\n(.*?)```" % re.escape(block), text, re.S)
    assert m, f"docs/CLI.md has no json-fields {block} block"
    return {line.split()[0] for line in m.group(1).splitlines() if line.strip()}


def run(*args, input=None):
    """``vdisk ARGS`` in this process: a click Result (stdout, stderr, exit_code)."""
    return CliRunner(catch_exceptions=False).invoke(main, [str(a) for a in args], input=input)


def ok(*args) -> str:
    r = run(*args)
    assert r.exit_code == 0, (args, r.exit_code, r.stdout, r.stderr)
    return r.stdout


def ok_json(*args):
    return json.loads(ok(*args, "--json"))


def vdisk_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "vdisk.cli.main", *map(str, args)]


def run_proc(*args, timeout=60) -> subprocess.CompletedProcess:
    """``vdisk ARGS`` as a subprocess; ``returncode``, ``stdout``, ``stderr`` as text."""
    return subprocess.run(vdisk_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def one_error_line(r, code: int, *words: str) -> str:
    """Exit ``code``, and stderr exactly one 'vdisk: error:' line holding ``words``."""
    got = r.exit_code if hasattr(r, "exit_code") else r.returncode
    lines = r.stderr.splitlines()
    assert got == code, (got, r.stdout, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("vdisk: error: "), r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert "Traceback" not in r.stderr
    return lines[0]


def info(disk) -> dict:
    return ok_json("info", disk)


def unfinished(disk) -> dict | None:
    """``vdisk info``'s conversion object while the conversion is unfinished,
    else None (a complete one may still be described, as complete)."""
    conv = info(disk)["conversion"]
    return None if conv is None or conv.get("complete") else conv


def snapshot_names(disk) -> list[str]:
    return [s["name"] for s in ok_json("snapshot", "list", disk)]


def verify_clean(disk):
    r = run("verify", disk)
    assert r.exit_code == 0 and "no problems found" in r.stdout, (r.exit_code, r.stdout, r.stderr)


# ------------------------------------------------------------------ qemu

def qemu(tool: str, *args, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run([tool, *map(str, args)], capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    if check and r.returncode != 0:
        said = (r.stderr or r.stdout).strip()
        raise AssertionError(f"{tool} {' '.join(map(str, args))}: exit {r.returncode}: {said}")
    return r


def qemu_img(*args, check=True) -> str:
    return qemu("qemu-img", *args, check=check).stdout


def qemu_io(path, fmt: str, cmds: list[str]):
    """Run ``cmds`` in one qemu-io process on ``path``."""
    args = ["-f", fmt]
    for c in cmds:
        args += ["-c", c]
    qemu("qemu-io", *args, path)


def assert_same(a, fmt_a, b, fmt_b, size: int | None = None):
    """``qemu-img compare``: the same bytes, and the same virtual size (which
    plain compare forgives when the longer image's tail reads as zeros;
    strict mode would also compare allocation, which vdisk need not keep).
    ``size``: b's virtual size, when the caller knows it (saves a qemu-img)."""
    r = qemu("qemu-img", "compare", "-U", "-f", fmt_a, "-F", fmt_b, a, b, check=False)
    assert r.returncode == 0, f"{a} ({fmt_a}) != {b} ({fmt_b}): {r.stdout.strip()} {r.stderr.strip()}"
    size_a = os.path.getsize(a) if fmt_a == "raw" else image_info(a, fmt_a)["virtual-size"]
    assert size_a == (size if size is not None else image_info(b, fmt_b)["virtual-size"]), (a, b)


def image_info(path, fmt=None) -> dict:
    args = ["info", "--output=json", "-U"] + (["-f", fmt] if fmt else []) + [path]
    return json.loads(qemu_img(*args))


def own_map(path, fmt: str) -> list[dict]:
    """The depth-0 extents of ``path`` (what it holds itself), from qemu-img map."""
    return [e for e in json.loads(qemu_img("map", "--output=json", "-U", "-f", fmt, path))
            if e.get("depth", 0) == 0 and e.get("present", True)]


def own_data_blocks(path, fmt: str, bs: int = BS) -> set[int]:
    """The ``bs`` blocks that ``path``'s own data extents touch (rounded out):
    the most a conversion may allocate for that layer."""
    out: set[int] = set()
    for e in own_map(path, fmt):
        if e["data"] and not e["zero"]:
            out.update(range(e["start"] // bs, -(-(e["start"] + e["length"]) // bs)))
    return out


def own_data_bytes(path, fmt: str) -> int:
    return sum(e["length"] for e in own_map(path, fmt) if e["data"] and not e["zero"])


def own_nonzero_blocks(path, tmpdir, bs: int = BS) -> int:
    """Whole ``bs`` blocks inside a qcow2 layer's own data extents whose own
    bytes (the layer read without its backing) are not all zeros: the least
    a conversion must allocate for that layer."""
    raw = os.path.join(tmpdir, os.path.basename(path) + ".own.raw")
    spec = json.dumps({"driver": "qcow2", "backing": None, "file": {"driver": "file", "filename": str(path)}})
    qemu_img("convert", "-U", "-O", "raw", f"json:{spec}", raw)
    n = 0
    with open(raw, "rb") as f:
        for e in own_map(path, "qcow2"):
            if not e["data"] or e["zero"]:
                continue
            first, end = -(-e["start"] // bs), (e["start"] + e["length"]) // bs
            for b in range(first, end):
                f.seek(b * bs)
                if f.read(bs).count(0) != bs:
                    n += 1
    os.unlink(raw)
    return n


# ------------------------------------------------------------------ chains

@dataclass
class Chain:
    """A chain qemu made: ``layers`` base first, each with its format."""

    layers: list[str]
    formats: list[str]
    size: int
    internal: dict[int, list[str]] = field(default_factory=dict)   # layer index -> internal snapshots

    @property
    def top(self) -> str:
        return self.layers[-1]

    @property
    def names(self) -> list[str]:
        """The snapshot names convert gives by default, base first."""
        out = []
        for i, p in enumerate(self.layers):
            label = os.path.basename(p)
            out += [f"{label}@{s}" for s in self.internal.get(i, [])]
            if i < len(self.layers) - 1:
                out.append(label)
        return out


def source_file(path, rng: random.Random, size: int = 512 * KiB) -> str:
    """A file of seeded random bytes for ``qemu-io write -s`` (data no pattern byte could fake)."""
    with open(path, "wb") as f:
        f.write(rng.randbytes(size))
    return str(path)


def scribble(rng: random.Random, size: int, count: int, src: str, *, align: int = 1,
             max_len: int = 192 * KiB, kinds=("data", "data", "pattern", "zero", "discard")) -> list[str]:
    """``count`` seeded qemu-io commands over an image of ``size`` bytes:
    random data from ``src``, pattern bytes, zero writes and discards, at
    offsets aligned to ``align`` (1: anywhere, sub-cluster and unaligned)."""
    cmds = []
    for _ in range(count):
        kind = rng.choice(kinds)
        ln = max(align, rng.randrange(1, max_len) // align * align)
        off = rng.randrange(0, size - ln) // align * align
        if kind == "data":
            cmds.append(f"write -q -s {src} {off} {ln}")
        elif kind == "pattern":
            cmds.append(f"write -q -P {rng.randrange(1, 256)} {off} {ln}")
        elif kind == "zero":
            cmds.append(f"write -q -z {off} {ln}")
        else:
            cmds.append(f"discard -q {off} {ln}")
    return cmds


def create(path, fmt="qcow2", size=None, backing=None, backing_fmt=None, opts=None):
    args = ["create", "-q", "-f", fmt]
    if opts:
        args += ["-o", opts]
    if backing is not None:
        args += ["-b", os.path.basename(backing) if os.path.dirname(str(backing)) == os.path.dirname(
            str(path)) else backing, "-F", backing_fmt or fmt]
    args.append(path)
    if size is not None:
        args.append(str(size))
    qemu_img(*args)
    return str(path)


def build_chain(d, specs: list[dict], size: int = 4 * MiB, seed: int = 0) -> Chain:
    """A chain in directory ``d`` from ``specs`` (base first), each a dict:
    ``name``, ``fmt`` (qcow2), ``opts`` (qemu-img create -o), ``cmds``
    (qemu-io commands, or a callable (rng, size, src) -> commands),
    ``snapshots`` ({internal snapshot name: commands written before it}:
    each internal snapshot is taken after its commands, the ``cmds`` after
    all of them)."""
    rng = random.Random(seed)
    layers, formats, internal = [], [], {}
    for i, spec in enumerate(specs):
        fmt = spec.get("fmt", "qcow2")
        path = os.path.join(d, spec.get("name", f"layer{i}.{fmt}"))
        create(path, fmt, size if not layers else spec.get("size"),
               layers[-1] if layers else None, formats[-1] if layers else None, spec.get("opts"))
        src = source_file(os.path.join(d, f".src{i}"), rng)
        for sname, cmds in (spec.get("snapshots") or {}).items():
            cmds = cmds(rng, size, src) if callable(cmds) else cmds
            if cmds:
                qemu_io(path, fmt, cmds)
            qemu_img("snapshot", "-c", sname, path)
            internal.setdefault(i, []).append(sname)
        cmds = spec.get("cmds", [])
        cmds = cmds(rng, size, src) if callable(cmds) else cmds
        if cmds:
            qemu_io(path, fmt, cmds)
        layers.append(path)
        formats.append(fmt)
    return Chain(layers, formats, size, internal)


def state_raw(chain: Chain, i: int, internal: str | None, out) -> str:
    """Layer ``i`` of ``chain`` as it reads (at internal snapshot ``internal``), as a raw file."""
    args = ["convert", "-U", "-f", chain.formats[i], "-O", "raw"]
    if internal is not None:
        args += ["-l", f"snapshot.name={internal.replace(',', ',,')}"]
    qemu_img(*args, chain.layers[i], out)
    return str(out)


def check_converted(disk, chain: Chain, tmpdir):
    """Every snapshot the conversion made, exported by vdisk, equals its
    layer (at its internal snapshot); the running point equals the top;
    the disk verifies clean."""
    states = []
    for i in range(len(chain.layers)):
        states += [(i, s) for s in chain.internal.get(i, [])]
        states.append((i, None))
    names = chain.names
    assert snapshot_names(disk) == names
    for (i, internal), name in zip(states, names + [None]):
        out = os.path.join(tmpdir, f"exp-{len(os.listdir(tmpdir))}.raw")
        ok("export", disk, out, *(["--snapshot", name] if name else []))
        if internal is None:
            assert_same(out, "raw", chain.layers[i], chain.formats[i], chain.size)
        else:
            assert_same(out, "raw", state_raw(chain, i, internal, out + ".src"), "raw", chain.size)
            os.unlink(out + ".src")
        os.unlink(out)
    verify_clean(disk)


def assert_disks_equal(a, b):
    """Two disks hold the same snapshots (names, parents, bytes) and running
    point, read in this process."""
    import vdisk
    with vdisk.Disk.open(str(a), readonly=True) as da, vdisk.Disk.open(str(b), readonly=True) as db:
        sa, sb = da.snapshots(), db.snapshots()
        assert [(s.name, s.parent, s.size) for s in sa] == [(s.name, s.parent, s.size) for s in sb]
        for name in [s.name for s in sa] + [None]:
            va = da if name is None else da.open_snapshot(name)
            vb = db if name is None else db.open_snapshot(name)
            assert va.size == vb.size
            for off in range(0, va.size, 4 * MiB):
                n = min(4 * MiB, va.size - off)
                assert va.read(off, n) == vb.read(off, n), (name, off)
