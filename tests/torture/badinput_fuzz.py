"""The NBD request fuzzer: hypothesis strategies and an exact model of the disk.

One connection sends one request at a time (libnbd with strict mode off, so
odd requests reach the server instead of being refused by the client), and
every outcome is checked against a byte-exact model:

* a well-formed request inside the disk must succeed (the only allowed
  refusal is ENOTSUP for a fast zero that may not punch holes);
* a request past the end, of length 0 or over the advertised maximum must
  fail with an errno and change nothing;
* a request with flags the command does not take may fail or succeed, but
  it does so whole: the model follows what the server said;
* every read returns the model's bytes; extents that block status calls
  zero read as zeros;
* writes never touch the sentinel range (the fuzzer skips in-range writes
  there), which must read back unchanged.
"""

from __future__ import annotations

import errno

from hypothesis import strategies as st

from load_model import pattern
from load_serve import close_handle, import_nbd

BS = 4096
SIZE = 2 << 20
SENTINEL = (1 << 20, (1 << 20) + (256 << 10))
MAX_REQUEST = 32 << 20
U64 = (1 << 64) - 1

nbd = import_nbd()
FUA, NO_HOLE, FAST_ZERO, DF, REQ_ONE = (nbd.CMD_FLAG_FUA, nbd.CMD_FLAG_NO_HOLE, nbd.CMD_FLAG_FAST_ZERO,
                                        nbd.CMD_FLAG_DF, nbd.CMD_FLAG_REQ_ONE)
ALLOWED = {"read": DF, "write": FUA, "trim": FUA, "zero": FUA | NO_HOLE | FAST_ZERO,
           "block_status": REQ_ONE, "flush": 0, "cache": 0}
WRITES = ("write", "trim", "zero")

EDGE_OFFSETS = [0, 1, BS - 1, BS, SIZE - BS, SIZE - BS + 1, SIZE - 1, SIZE, SIZE + 1, SENTINEL[0] - 1,
                SENTINEL[1], 1 << 31, 1 << 32, (1 << 63) - 1, 1 << 63, U64 - BS, U64]
EDGE_LENGTHS = [0, 1, 511, 512, BS - 1, BS, BS + 1, 2 * BS + 3, SIZE, SIZE + 1, MAX_REQUEST,
                MAX_REQUEST + 1, (1 << 31), (1 << 32) - 1, 1 << 32, U64]
FLAG_SETS = [0, FUA, NO_HOLE, FAST_ZERO, DF, REQ_ONE, FUA | NO_HOLE, NO_HOLE | FAST_ZERO,
             FUA | NO_HOLE | FAST_ZERO, DF | REQ_ONE, 1 << 7, 1 << 15, 0xFFFF]

# Half of the draws stay inside the disk, so valid requests keep changing
# the state the invalid ones must not disturb.
offsets = st.one_of(st.integers(0, SIZE - 1), st.integers(0, SIZE // BS - 1).map(lambda b: b * BS),
                    st.sampled_from(EDGE_OFFSETS), st.integers(0, U64))
lengths = st.one_of(st.integers(1, 3 * BS), st.integers(1, 16).map(lambda n: n * BS),
                    st.sampled_from(EDGE_LENGTHS), st.integers(0, 1 << 33))
flags = st.one_of(st.just(0), st.sampled_from(FLAG_SETS), st.integers(0, 0xFFFF))
KINDS = ["read", "write", "write", "trim", "zero", "zero", "block_status", "flush", "cache"]


@st.composite
def _valid_request(draw):
    """A request the server must carry out: in range, with flags its command takes."""
    kind = draw(st.sampled_from(KINDS[:-1]))
    off = draw(st.one_of(st.integers(0, SIZE - 1), st.integers(0, SIZE // BS - 1).map(lambda b: b * BS)))
    n = draw(st.one_of(st.integers(1, 3 * BS), st.integers(1, 16).map(lambda k: k * BS)))
    n = min(n, SIZE - off)
    allowed = ALLOWED[kind]
    fl = draw(st.sampled_from([0, 0, allowed] + [f for f in FLAG_SETS if f and f & ~allowed == 0]))
    return kind, off, n, fl


# Half valid, half anything: the valid ones keep changing the state that the
# invalid ones must leave alone.
requests = st.one_of(_valid_request(), st.tuples(st.sampled_from(KINDS), offsets, lengths, flags))


class Fuzz:
    """The model, the connection, and what happened so far."""

    def __init__(self, server, model: bytearray):
        self.server = server
        self.model = model
        self.h = server.connect(strict=False)
        self.k = 1 << 20          # write ids, apart from the initial pattern's
        self.figures = {"operations": 0, "bad_inputs_tried": 0, "errors": {}, "reconnects": 0,
                        "bytes_checked": 0, "skipped_sentinel": 0}

    def close(self):
        close_handle(self.h)

    def valid(self, kind, off, n, fl) -> bool:
        return (fl & ~ALLOWED[kind]) == 0 and kind != "cache" and (
            kind == "flush" or (0 < n <= MAX_REQUEST and off + n <= SIZE))

    def run(self, kind, off, n, fl) -> str | None:
        """Send one request; a problem (str) or None."""
        if kind == "flush":
            off = n = 0
        if kind == "read":
            n = min(n, (64 << 20) + 1)        # libnbd allocates the buffer first
        if kind == "write":
            n = min(n, MAX_REQUEST + 1)       # the payload is really sent
        in_range = off + n <= SIZE
        if kind in WRITES and in_range and off < SENTINEL[1] and off + n > SENTINEL[0]:
            self.figures["skipped_sentinel"] += 1
            return None
        valid = self.valid(kind, off, n, fl)
        self.figures["operations"] += 1
        self.figures["bad_inputs_tried"] += not valid
        what = f"{kind} offset {off} length {n} flags {fl:#x}"
        extents = []
        try:
            if kind == "read":
                data = bytes(self.h.pread(n, off, fl))
            elif kind == "write":
                self.k += 1
                payload = pattern(self.k, off, off + n) if in_range else bytes(n)
                self.h.pwrite(payload, off, fl)
            elif kind == "trim":
                self.h.trim(n, off, fl)
            elif kind == "zero":
                self.h.zero(n, off, fl)
            elif kind == "block_status":
                self.h.block_status(n, off, lambda ctx, o, ents, err: extents.append((ctx, o, list(ents))), fl)
            elif kind == "flush":
                self.h.flush(fl)
            else:
                self.h.cache(n, off, fl)
        except nbd.Error as e:
            name = e.errno or str(e.errnum)
            self.figures["errors"][name] = self.figures["errors"].get(name, 0) + 1
            self._reconnect_if_dead()
            if not e.errnum:
                return f"{what}: failed without an errno: {e}"
            if valid and not (kind == "zero" and fl & FAST_ZERO and fl & NO_HOLE and e.errnum == errno.ENOTSUP):
                return f"{what}: a valid request was refused: {e}"
            return None
        if not in_range or n > MAX_REQUEST or (n == 0 and kind != "flush"):
            if kind in WRITES + ("read",) and n:
                return f"{what}: succeeded outside the disk (size {SIZE})"
            return None
        if kind == "read":
            self.figures["bytes_checked"] += n
            if data != self.model[off:off + n]:
                return f"{what}: wrong bytes, first at {off + _first_diff(data, self.model[off:off + n])}"
        elif kind == "write":
            self.model[off:off + n] = payload
        elif kind in ("trim", "zero"):
            self.model[off:off + n] = bytes(n)
        elif kind == "block_status":
            return self._check_extents(what, off, n, fl, extents)
        return None

    def _check_extents(self, what, off, n, fl, extents) -> str | None:
        if not extents:
            return f"{what}: no extents returned"
        for ctx, o, ents in extents:
            if ctx != nbd.CONTEXT_BASE_ALLOCATION or o != off or not ents or len(ents) % 2:
                return f"{what}: malformed extents {ctx} {o} {ents[:8]}"
            if fl & REQ_ONE and len(ents) != 2:
                return f"{what}: REQ_ONE but {len(ents) // 2} extents"
            pos = off
            for length, typ in zip(ents[::2], ents[1::2]):
                if length <= 0 or pos + length > SIZE:
                    return f"{what}: extent {pos}+{length} is empty or past the end"
                if typ & nbd.STATE_ZERO and any(self.model[pos:pos + length]):
                    return f"{what}: extent {pos}+{length} reported zero but holds data"
                pos += length
        return None

    def _reconnect_if_dead(self):
        # A server may drop a connection over a bad request; it must keep serving others.
        if self.h.aio_is_dead() or self.h.aio_is_closed():
            self.h.close()
            self.h = self.server.connect(strict=False)
            self.figures["reconnects"] += 1

    def check_region(self, off: int, n: int) -> str | None:
        data = b"".join(bytes(self.h.pread(min(4 << 20, off + n - o), o)) for o in range(off, off + n, 4 << 20))
        self.figures["bytes_checked"] += n
        if data != self.model[off:off + n]:
            return f"bytes {off}+{n} differ from the model, first at {off + _first_diff(data, self.model[off:off + n])}"
        return None


def _first_diff(a: bytes, b: bytes) -> int:
    return next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
