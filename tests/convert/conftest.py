"""Fixtures of the conversion tests (tests/convert): skipped, with the
reason, where the qemu tools or the libnbd binding are missing."""

from __future__ import annotations

import pytest

from .util import missing_tools

_MISSING = missing_tools()


def pytest_collection_modifyitems(config, items):
    if not _MISSING:
        return
    skip = pytest.mark.skip(reason=f"needs {', '.join(_MISSING)} (./dev setup installs them)")
    for item in items:
        if "tests/convert/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(skip)
