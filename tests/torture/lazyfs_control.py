"""lazyfs's power switch and control socket: the cut, sync, and the requests
lazyfs.py sends (one JSON object per line, one JSON reply per line).

:class:`Power` is a mixin of lazyfs_server.LazyFS; its methods run under
the file system's lock, on the control socket's threads (a ``cut`` fault
rule calls :meth:`_cut` from a FUSE handler, already holding it).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import threading

from lazyfs_pages import Rule


class Power:
    def _cut(self, keep, lose, grow) -> dict:
        """Power cut: write back a random subset of the dirty pages, lose some
        new directory entries, forget the rest; from now on fail everything."""
        rng = self.rng
        keep = rng.choice((0.0, 0.25, 0.5, 0.75, 1.0)) if keep is None else keep
        lose = 0.5 if lose is None else lose
        grow = 0.25 if grow is None else grow
        kept = dropped = 0
        for ino in sorted(self.files):
            k, d, grown = self.files[ino].cut(rng, keep, grow)
            kept += k
            dropped += d
            self.stats["sizes_grown"] += grown
        lost = []
        for parent in sorted(self.pending):
            node = self.nodes.get(parent)
            if node is None or node.path is None:
                continue
            for name, how in sorted(self.pending[parent].items()):
                if rng.random() >= lose:
                    continue
                rel = f"{node.path}/{name}" if node.path else name
                full = self._full(rel)
                if not os.path.lexists(full):
                    continue
                if how[0] == "new":
                    if os.path.isdir(full) and not os.path.islink(full):
                        shutil.rmtree(full, ignore_errors=True)
                    else:
                        os.unlink(full)
                    lost.append(rel)
                else:
                    old = self.nodes.get(how[1])
                    if old is None or old.path is None:
                        continue
                    old_rel = f"{old.path}/{how[2]}" if old.path else how[2]
                    if not os.path.lexists(self._full(old_rel)) and os.path.isdir(self._full(old.path)):
                        os.rename(full, self._full(old_rel))
                        lost.append(f"{rel} (renamed back to {old_rel})")
        self.pending.clear()
        self.dead = True
        self.stats["cuts"] += 1
        self.stats["pages_kept"] += kept
        self.stats["pages_dropped"] += dropped
        self.stats["entries_lost"] += len(lost)
        return {"keep": keep, "kept": kept, "dropped": dropped, "lost_entries": lost}

    def sync_all(self):
        """Everything durable: dirty pages and directory entries (an idle machine)."""
        if self.dead:
            raise OSError(errno.EIO, "the file system is dead (power cut)")
        for f in self.files.values():
            f.sync()
        self.pending.clear()

    def control(self, req: dict) -> dict:
        cmd = req.get("cmd")
        with self.lock:
            if cmd == "ping":
                return {"ok": True, "dead": self.dead}
            if cmd == "stats":
                return {"ok": True, "dead": self.dead, "rules": [r.as_dict() for r in self.rules],
                        "dirty_pages": sum(len(f.dirty) for f in self.files.values()),
                        "pending_entries": sum(len(p) for p in self.pending.values()),
                        "fired": self.fired_log[-50:], **self.stats}
            if cmd == "cut":
                if self.dead:
                    return {"ok": True, "already": True}
                return {"ok": True, **self._cut(req.get("keep"), req.get("lose"), req.get("grow"))}
            if cmd == "fault":
                args = {k: v for k, v in req.items() if k != "cmd"}
                rule = Rule(next(self._rule_ids), **args)
                self.rules.append(rule)
                return {"ok": True, "id": rule.id}
            if cmd == "clear":
                self.rules.clear()
                return {"ok": True}
            if cmd == "sync":
                self.sync_all()
                return {"ok": True}
        return {"ok": False, "error": f"unknown command {cmd!r}"}



def serve_control(fs: Power, path: str):
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(8)

    def client(conn):
        with conn, conn.makefile("rwb") as stream:
            for line in stream:
                try:
                    reply = fs.control(json.loads(line))
                except Exception as e:        # a bad request must not end the server
                    reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                stream.write(json.dumps(reply).encode() + b"\n")
                stream.flush()

    def accept():
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=client, args=(conn,), daemon=True).start()
    threading.Thread(target=accept, daemon=True).start()


