"""The SIZE parameter of the ``vdisk`` commands (create, resize, convert --rate).

Its own module so that :mod:`vdisk.cli.failures` can recognise it without
importing :mod:`vdisk.cli.common` (which imports failures), and so that a
command taking no size does not load :mod:`vdisk.units`.
"""

from __future__ import annotations

import click

from vdisk.errors import VdiskError
from vdisk.units import parse_size


class SizeType(click.ParamType):
    """A size as :func:`vdisk.units.parse_size` reads it (10G, 1.5TiB, 4096)."""

    name = "SIZE"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return parse_size(value)
        except VdiskError as e:
            self.fail(str(e), param, ctx)
