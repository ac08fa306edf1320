"""``vdisk ARGS`` in a child process that stops itself at a chosen point of
the conversion, for the resume tests (run as a script, never imported by
pytest).

    python convert_child.py MODE N ARGS...

Checkpoints are made small (every 64 KiB, reads of 64 KiB), so even a
small chain passes many of them. MODE:

* ``kill-in-state``: after the second checkpoint inside state N (0-based)
  is committed, write one more chunk (uncommitted data the resume must not
  leak), then SIGKILL;
* ``kill-after-state``: SIGKILL right after state N (0-based) is committed
  (its snapshot taken);
* ``interrupt``: after checkpoint N, SIGINT, as Ctrl-C would (the CLI must
  say the disk is resumable).

It hooks the converter's internals (``_Converter.step``, ``_checkpoint``,
``_write_data``); a test whose child ends with exit 0 means a hook no
longer fires.
"""

from __future__ import annotations

import os
import signal
import sys

from vdisk.cli.main import main
from vdisk.convert import converter

mode, n, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
# Ctrl-C as at a terminal, whatever this process inherited: a test run in the
# background of a shell without job control starts with SIGINT ignored, and
# Python then never raises KeyboardInterrupt (the child converted to the end).
signal.signal(signal.SIGINT, signal.default_int_handler)
converter.CHECKPOINT_BYTES = 64 << 10
converter.CHUNK_BYTES = 64 << 10
C = converter._Converter
state = {"checkpoints": 0, "armed": False}

orig_checkpoint, orig_write, orig_step = C._checkpoint, C._write_data, C.step


def checkpoint(self, done, length):
    before = self._since_checkpoint + length >= converter.CHECKPOINT_BYTES
    orig_checkpoint(self, done, length)
    if before:
        state["checkpoints"] += 1
        if mode == "interrupt" and state["checkpoints"] == n:
            os.kill(os.getpid(), signal.SIGINT)
        if mode == "kill-in-state" and self.rec.next == n:
            state["in_state"] = state.get("in_state", 0) + 1
            if state["in_state"] == 2:
                state["armed"] = True


def write_data(self, off, buf):
    orig_write(self, off, buf)
    if state["armed"]:
        os.kill(os.getpid(), signal.SIGKILL)


def step(self, st):
    orig_step(self, st)
    if mode == "kill-after-state" and self.rec.next - 1 == n:
        os.kill(os.getpid(), signal.SIGKILL)


C._checkpoint, C._write_data, C.step = checkpoint, write_data, step
main(args, prog_name="vdisk")
