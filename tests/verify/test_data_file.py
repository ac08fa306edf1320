"""verify without ``--data`` looks at the data file too (issue 10, defect 6).

Reported: "no problems found" with DISK/data missing, truncated to 4 MB
while the VBA -> PBA map places blocks past that, or a directory. Each is now
one ``data-file`` problem line (exit 1), found from the file's type and size
against the highest mapped PBA, without reading a block.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from click.testing import CliRunner

from vdisk import Disk
from vdisk.cli.main import main
from vdisk.snapshots.verify import verify

MiB = 1 << 20
BS = 4096


def _run(*args):
    return CliRunner().invoke(main, ["verify", *map(str, args)])


@pytest.fixture(scope="module")
def eight_mib(tmp_path_factory):
    """A closed 8 MiB disk, every block written, a snapshot, then rewrites:
    the map places blocks well past 4 MiB of the data file."""
    path = str(tmp_path_factory.mktemp("data-file") / "disk")
    with Disk.create(path, 8 * MiB) as d:
        d.write(0, bytes(range(1, 256)) * (8 * MiB // 255) + b"\1" * (8 * MiB % 255))
        d.create_snapshot("s")
        d.write(2 * MiB, b"\7" * MiB)
    return path


@pytest.fixture
def disk(eight_mib, tmp_path):
    path = str(tmp_path / "disk")
    shutil.copytree(eight_mib, path)
    return path


def _mapped(path):
    """(vba, end, pba) of every VBA -> PBA extent, read through the engine."""
    with Disk.open(path, readonly=True) as d:
        return [(v, v + n, p) for v, p, n in d._vba.extents()]


def _lost_past(path, size):
    return sum(max(0, min(e - v, p + (e - v) - size // BS)) for v, e, p in _mapped(path))


def _problems(r):
    return [ln for ln in r.output.splitlines() if ln.startswith("data-file: ")]


def test_missing_data_file(disk):
    os.unlink(os.path.join(disk, "data"))
    r = _run(disk)
    assert r.exit_code == 1, r.output
    (line,) = _problems(r)
    assert f"data file {os.path.join(disk, 'data')}: is missing" in line
    assert r.output.splitlines()[-1] == "1 problem found (data-file 1)"


def test_data_file_is_a_directory(disk):
    data = os.path.join(disk, "data")
    os.unlink(data)
    os.mkdir(data)
    r = _run(disk)
    assert r.exit_code == 1, r.output
    (line,) = _problems(r)
    assert "is a directory, not a regular file" in line


@pytest.mark.parametrize("size", [4 * MiB, 4 * MiB + 100, 1])
def test_data_file_truncated_before_mapped_blocks(disk, size):
    os.truncate(os.path.join(disk, "data"), size)
    lost = _lost_past(disk, size)
    assert lost > 0
    r = _run(disk)
    assert r.exit_code == 1, r.output
    (line,) = _problems(r)
    assert f"is {size} bytes" in line and f" {lost} of the " in line and "past its end" in line, line


def test_truncated_data_file_with_data_is_one_problem_not_one_per_block(disk):
    os.truncate(os.path.join(disk, "data"), 4 * MiB)
    r = _run("--json", "--data", disk)
    assert r.exit_code == 1, r.output
    report = json.loads(r.output)
    assert [p["kind"] for p in report["problems"]] == ["data-file"], report["problems"]
    assert 0 < report["data_blocks"] < report["blocks"]     # the blocks still in the file were read


def test_missing_data_file_with_data_is_one_problem(disk):
    os.unlink(os.path.join(disk, "data"))
    r = _run("--json", "--data", disk)
    assert r.exit_code == 1, r.output
    report = json.loads(r.output)
    assert [p["kind"] for p in report["problems"]] == ["data-file"]
    assert any("data blocks: not checked" in n for n in report["notes"])


def test_free_blocks_past_the_end_are_no_problem(tmp_path):
    """Trimmed blocks at the end of the PBA space are free: a file cut to the
    highest mapped block is complete."""
    path = str(tmp_path / "disk")
    with Disk.create(path, 4 * MiB) as d:
        d.write(0, b"\3" * 4 * MiB)
        d.flush()
        d.trim(2 * MiB, 2 * MiB)
    end = max(p + (e - v) for v, e, p in _mapped(path))
    os.truncate(os.path.join(path, "data"), end * BS)
    r = _run(path)
    assert r.exit_code == 0, r.output
    os.truncate(os.path.join(path, "data"), end * BS - 1)
    assert _run(path).exit_code == 1


def test_in_process_variant_checks_the_data_file_too(disk):
    from vdisk.snapshots.verify import verify_open_disk
    with Disk.open(disk, readonly=True) as d:
        os.truncate(os.path.join(disk, "data"), 4 * MiB)
        report = verify_open_disk(d)
    assert [p.kind for p in report.problems] == ["data-file"]


def test_healthy_disk_stays_clean(disk):
    report = verify(disk)
    assert report.ok, report.problems
