"""A real file system on disk.img: mkfs.ext4, files written with debugfs, a
snapshot taken through the CLI while mounted, more files, then e2fsck clean
on both image files and the snapshot still holding only the old files."""

from __future__ import annotations

import subprocess

from fuse_util import pattern, run_vdisk


def _run(*argv, check=True):
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({r.returncode}): {r.stdout}{r.stderr}")
    return r


def _debugfs_write(image, files: dict, tmp_path):
    cmds = []
    for name, data in files.items():
        src = tmp_path / f"src-{name}"
        src.write_bytes(data)
        cmds.append(f"write {src} {name}")
    script = tmp_path / "cmds"
    script.write_text("\n".join(cmds) + "\n")
    _run("debugfs", "-w", "-f", str(script), image)


def _ls(image) -> set[str]:
    out = _run("debugfs", "-R", "ls -p /", image).stdout
    # -p: /inode/mode/uid/gid/name/size/ per entry
    names = {line.split("/")[5] for line in out.splitlines() if line.count("/") >= 7}
    return names - {".", "..", "lost+found"}


def _cat(image, name) -> bytes:
    return subprocess.run(["debugfs", "-R", f"cat /{name}", image], capture_output=True, check=True,
                          timeout=120).stdout


def test_ext4_on_disk_img_with_a_live_snapshot_checks_clean(disk, mount, tmp_path):
    m = mount(disk)
    _run("mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "nodiscard", m.image)
    old = {"a.txt": b"first file\n", "big.bin": pattern(1, 3 << 20), "odd.bin": pattern(2, 12_345)}
    _debugfs_write(m.image, old, tmp_path)
    run_vdisk("snapshot", "create", disk, "s1")
    new = {"b.txt": b"written after the snapshot\n", "big2.bin": pattern(3, 2 << 20)}
    _debugfs_write(m.image, new, tmp_path)
    _run("debugfs", "-w", "-R", "rm a.txt", m.image)

    for image in (m.image, m.snap("s1")):
        r = _run("e2fsck", "-fn", image, check=False)
        assert r.returncode == 0, f"e2fsck on {image}: {r.stdout}{r.stderr}"

    assert _ls(m.snap("s1")) == set(old)
    for name, data in old.items():
        assert _cat(m.snap("s1"), name) == data
    assert _ls(m.image) == (set(old) | set(new)) - {"a.txt"}
    for name, data in new.items():
        assert _cat(m.image, name) == data
    # mkfs with discard punches the whole image: it must still check clean.
    _run("mkfs.ext4", "-q", "-F", "-b", "4096", m.image)
    assert _run("e2fsck", "-fn", m.image, check=False).returncode == 0
    assert _ls(m.image) == set()
