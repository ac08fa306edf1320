"""Child process: open a damaged disk with the API and read everything.

    python badinput_probe.py DISK EXPECTED_DIR readonly|writable

EXPECTED_DIR holds one file per export: ``running.bin`` and
``snap-NAME.bin``. Prints one JSON object: how the open went (an error's
class, whether it is a VdiskError, its message) and, per export, how many
blocks read right, how many failed (by error class) and which read wrong
bytes. A child, because LMDB maps the file: damage that kills the process
(SIGSEGV, SIGBUS) must show up as a finding, not take the test runner down.
"""

from __future__ import annotations

import json
import os
import sys


def _err(e: BaseException) -> dict:
    from vdisk.errors import VdiskError
    return {"class": type(e).__name__, "vdisk": isinstance(e, VdiskError), "message": str(e)[:500]}


def main(disk: str, expected_dir: str, mode: str) -> dict:
    from vdisk import Disk
    out: dict = {"open": None, "exports": {}, "listed": None}
    try:
        d = Disk.open(disk, readonly=(mode == "readonly"))
    except BaseException as e:   # reported, whatever it is: the parent judges it
        out["open"] = _err(e)
        return out
    try:
        try:
            out["listed"] = sorted(s.name for s in d.snapshots(exclusive=False))
        except BaseException as e:
            out["listed"] = _err(e)
        wants = {}
        for fname in sorted(os.listdir(expected_dir)):
            name = "" if fname == "running.bin" else fname[len("snap-"):-len(".bin")]
            with open(os.path.join(expected_dir, fname), "rb") as f:
                wants[name] = bytearray(f.read())
            out["exports"][name] = _read_all(d, name, wants[name])
        if mode == "writable":
            # Writes on damaged metadata must not reach a snapshot or come
            # back wrong (a flipped counter could hand out a VBA twice).
            try:
                for i, off in enumerate((0, 4096, 8192 + 100, len(wants[""]) - 4096)):
                    data = bytes([0xA5 ^ i]) * 4096
                    d.write(off, data)
                    wants[""][off:off + len(data)] = data
                d.flush()
                out["wrote"] = True
            except BaseException as e:
                out["wrote"] = _err(e)
            for name, want in wants.items():
                out["exports"][name + "/after-write"] = _read_all(d, name, want)
    finally:
        try:
            d.close()
        except BaseException as e:
            out["close"] = _err(e)
    return out


def _read_all(d, name: str, want: bytes) -> dict:
    res = {"ok": 0, "errors": {}, "wrong": [], "raw": []}
    try:
        dev = d if name == "" else d.open_snapshot(name)
    except BaseException as e:
        res["open"] = _err(e)
        return res
    bs = d.block_size
    for off in range(0, len(want), bs):
        try:
            got = dev.read(off, bs)
        except BaseException as e:
            info = _err(e)
            res["errors"][info["class"]] = res["errors"].get(info["class"], 0) + 1
            if not info["vdisk"] and len(res["raw"]) < 3:
                res["raw"].append(info)
            continue
        if got == want[off:off + bs]:
            res["ok"] += 1
        elif len(res["wrong"]) < 20:
            res["wrong"].append(off)
    return res


if __name__ == "__main__":
    sys.stdout.write(json.dumps(main(*sys.argv[1:4])) + "\n")
