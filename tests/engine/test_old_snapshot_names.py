"""Snapshots named under the older, looser rule stay reachable.

Creation applies the current rule; reading, reverting to and deleting an
existing snapshot only need a name that can be one, or a snapshot called
``-`` or ``..`` (accepted before) could never be removed.
"""

from __future__ import annotations

import pytest

from vdisk import Disk
from vdisk import disk as engine
from vdisk.errors import InvalidArgument, NotFound


@pytest.mark.parametrize("old", ["-", "..", ".hidden", "-h"])
def test_an_old_name_can_be_read_reverted_and_deleted(tmp_path, monkeypatch, old):
    with Disk.create(str(tmp_path / "d"), 1 << 20) as d:
        d.write(0, b"a" * 4096)
        monkeypatch.setattr(engine, "validate_snapshot_name", lambda name: None)
        d.create_snapshot(old)                    # as an older vdisk did
        monkeypatch.undo()
        with pytest.raises(InvalidArgument):
            d.create_snapshot(old + "x")          # the current rule for new ones
        d.write(0, b"b" * 4096)
        assert d.open_snapshot(old).read(0, 1) == b"a"
        d.revert(old)
        assert d.read(0, 1) == b"a"
        d.delete_snapshot(old)
        assert d.snapshots() == []


def test_hidden_deferred_names_are_not_users_to_name(tmp_path):
    with Disk.create(str(tmp_path / "d"), 1 << 20) as d:
        for call in (d.open_snapshot, d.revert, d.delete_snapshot):
            with pytest.raises(NotFound):
                call("~s.123")
