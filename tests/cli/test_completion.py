"""Shell completion (click's): the script, commands, and snapshot names of
the DISK already typed."""

from __future__ import annotations

import pytest

from .util import run, run_proc


@pytest.mark.parametrize("shell, marker", [("bash", "complete -o nosort -F"), ("zsh", "compdef"),
                                           ("fish", "complete --no-files --command vdisk")])
def test_completion_prints_the_script(shell, marker):
    r = run("completion", shell)
    assert r.exit_code == 0 and "_VDISK_COMPLETE" in r.stdout and marker in r.stdout, r.stdout


def _complete(*words):
    env = {"_VDISK_COMPLETE": "bash_complete", "COMP_WORDS": " ".join(("vdisk",) + words),
           "COMP_CWORD": str(len(words))}
    r = run_proc(env=env)
    assert r.returncode == 0, r.stderr
    return [line.split(",", 1)[1] for line in r.stdout.splitlines() if line]


def test_commands_and_snapshot_names_complete(disk):
    assert "snapshot" in _complete("sn")
    assert set(_complete("snapshot", "r")) == {"rename", "revert", "rollback"}
    for name in ("before-upgrade", "before-test", "nightly"):
        run("snapshot", "create", disk, name)
    assert sorted(_complete("snapshot", "delete", disk, "before")) == ["before-test", "before-upgrade"]
    assert _complete("snapshot", "delete", str(disk) + "-missing", "b") == []
