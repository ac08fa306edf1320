"""The import contracts of pyproject.toml ([tool.importlinter]) hold.

import-linter finds a package's modules by walking its directory, but
vdisk's subpackages live in sibling folders (setuptools package-dir), so the
check runs on a copy laid out as installed: tmp/vdisk/{*.py, btree/, ...}.
The copy also lets a test add a forbidden import and see the contract fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBPACKAGES = ("btree", "snapshots", "nbdplugin", "fusefs", "cli", "control", "convert", "replicate")


def _installed_layout(dest: str) -> str:
    pkg = os.path.join(dest, "vdisk")
    shutil.copytree(os.path.join(ROOT, "vdisk"), pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for sub in SUBPACKAGES:
        shutil.copytree(os.path.join(ROOT, sub), os.path.join(pkg, sub),
                        ignore=shutil.ignore_patterns("__pycache__", "*.txt"))
    return pkg


def _lint(tree: str) -> subprocess.CompletedProcess:
    exe = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    if not os.path.exists(exe):
        pytest.fail("lint-imports is missing: ./dev setup installs import-linter (the test extra)")
    env = dict(os.environ, PYTHONPATH=tree)
    return subprocess.run([exe, "--config", os.path.join(ROOT, "pyproject.toml"), "--no-cache"],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def tree(tmp_path):
    _installed_layout(str(tmp_path))
    return str(tmp_path)


def test_the_layers_hold(tree):
    r = _lint(tree)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout, r.stdout


def test_every_engine_module_is_in_a_layer():
    """A module missing from the layers would be unconstrained."""
    import tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        layers = tomllib.load(f)["tool"]["importlinter"]["contracts"][0]["layers"]
    named = {m.strip() for layer in layers for m in layer.split("|")}
    modules = {n[:-3] for n in os.listdir(os.path.join(ROOT, "vdisk"))
               if n.endswith(".py") and n != "__init__.py"}
    assert modules <= named, f"add to a layer in pyproject.toml: {sorted(modules - named)}"


@pytest.mark.parametrize("module,imports", [
    ("btree/check.py", "vdisk.disk"),            # the generic tree knowing of disks
    ("alloc.py", "vdisk.snapshots.usage"),        # the engine knowing of lifecycles
    ("snapshots/usage.py", "vdisk.cli.main"),     # lifecycle knowing of a front end
    ("nbdplugin/plugin.py", "vdisk.fusefs.fs"),   # one front end reaching into another
])
def test_an_upward_import_breaks_the_contract(tree, module, imports):
    path = os.path.join(tree, "vdisk", module)
    with open(path, "a") as f:
        # Inside a function: hidden from import time, not from the contract.
        f.write(f"\n\ndef _sneak():\n    import {imports}  # noqa\n")
    r = _lint(tree)
    assert r.returncode != 0, r.stdout
    assert "BROKEN" in r.stdout and imports in r.stdout, r.stdout
