"""FUSE operations pyfuse3 does not offer: ``fallocate`` and ``lseek``.

pyfuse3 (3.5) registers no ``fallocate`` and no ``lseek`` handler with
libfuse, so the kernel gets ENOSYS for both and then (for the rest of the
mount) answers ``fallocate(PUNCH_HOLE)`` with EOPNOTSUPP and
``SEEK_DATA``/``SEEK_HOLE`` as if the whole file were data. The FUSE protocol
itself carries both (FUSE_FALLOCATE; FUSE_LSEEK since Linux 4.19, libfuse
3.8), and a disk image without hole punching and hole seeking is a worse
image, so this module adds the two handlers to the running session.

How: :func:`pyfuse3.init` copies its ``struct fuse_lowlevel_ops`` into the
new ``struct fuse_session`` (libfuse's ``fuse_session_new`` does a memcpy),
and libfuse looks the handlers up in that copy for every request. Both the
ops table and the session pointer are static variables of pyfuse3's compiled
module; their addresses come from the module's ELF symbol table (pyfuse3 is
built from source by pip, unstripped). The copy is found inside the session
by its exact bytes, so the private layout of ``struct fuse_session`` does not
matter; the slots written are public ABI (``fuse_lowlevel.h``: fields are only
ever appended):

=====  ==============  =========================================================
slot   field           signature
=====  ==============  =========================================================
40     fallocate       (req, ino, int mode, off_t offset, off_t length, fi*)
43     lseek           (req, ino, off_t off, int whence, fi*)
=====  ==============  =========================================================

Everything is checked before anything is written (the symbols exist, the
table is at least 44 pointers long, both slots are empty, the copy is found
exactly once); if a check fails, :func:`install` returns the reason and
changes nothing, and the mount works without the two operations.

The handlers run synchronously inside ``fuse_session_process_buf`` on the
trio thread (where pyfuse3's own handlers run); they must reply exactly once
and never raise, so every exception becomes an errno reply.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import struct

log = logging.getLogger("vdisk.fusefs")

SLOT_FALLOCATE = 40
SLOT_LSEEK = 43
_MIN_SLOTS = 44
_PTR = ctypes.sizeof(ctypes.c_void_p)
# struct fuse_session starts with a few small fields before its ops copy.
_SESSION_SEARCH = 1024

_FALLOCATE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int,
                              ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)
_LSEEK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int64,
                          ctypes.c_int, ctypes.c_void_p)

# Symbols of pyfuse3's Cython module (module "pyfuse3", cdef globals).
_SYM_SESSION = b"__pyx_v_7pyfuse3_session"
_SYM_OPS = b"__pyx_v_7pyfuse3_fuse_ops"
_SYM_INIT = b"PyInit_pyfuse3"


class _Libfuse:
    def __init__(self):
        name = ctypes.util.find_library("fuse3") or "libfuse3.so.3"
        lib = ctypes.CDLL(name)
        self.reply_err = lib.fuse_reply_err
        self.reply_err.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self.reply_err.restype = ctypes.c_int
        self.reply_lseek = lib.fuse_reply_lseek
        self.reply_lseek.argtypes = [ctypes.c_void_p, ctypes.c_int64]
        self.reply_lseek.restype = ctypes.c_int


def elf_symbols(path: str, wanted: set[bytes]) -> dict[bytes, tuple[int, int]]:
    """``{name: (value, size)}`` for the wanted symbols of an ELF64 LE file."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError(f"{path} is not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    found: dict[bytes, tuple[int, int]] = {}
    for sh in sections:
        if sh[1] not in (2, 11):      # SHT_SYMTAB, SHT_DYNSYM
            continue
        offset, size, link, entsize = sh[4], sh[5], sh[6], sh[9]
        strtab = sections[link]
        str_off = strtab[4]
        for pos in range(offset, offset + size, entsize or 24):
            st_name, _info, _other, _shndx, value, sym_size = struct.unpack_from("<IBBHQQ", data, pos)
            if not st_name or not value:
                continue
            end = data.index(b"\0", str_off + st_name)
            name = data[str_off + st_name:end]
            if name in wanted:
                found[name] = (value, sym_size)
    return found


def install(fallocate_handler, lseek_handler) -> str | None:
    """Add the two handlers to pyfuse3's session (after :func:`pyfuse3.init`).

    ``fallocate_handler(ino, mode, offset, length)`` returns None or raises
    an exception with ``.errno``; ``lseek_handler(ino, offset, whence)``
    returns the new offset or raises likewise. Returns None when installed,
    else why not (nothing was changed).
    """
    try:
        import pyfuse3
        lib_path = pyfuse3.__file__
        syms = elf_symbols(lib_path, {_SYM_SESSION, _SYM_OPS, _SYM_INIT})
        missing = [s.decode() for s in (_SYM_SESSION, _SYM_OPS, _SYM_INIT) if s not in syms]
        if missing:
            return f"pyfuse3's module has no symbol {', '.join(missing)} (stripped build?)"
        module = ctypes.PyDLL(lib_path)   # the already loaded module: same handle
        base = ctypes.cast(getattr(module, _SYM_INIT.decode()), ctypes.c_void_p).value - syms[_SYM_INIT][0]
        ops_addr = base + syms[_SYM_OPS][0]
        ops_size = syms[_SYM_OPS][1]
        if ops_size < _MIN_SLOTS * _PTR:
            return f"pyfuse3's fuse_lowlevel_ops is {ops_size} bytes, too old for lseek"
        ops = ctypes.string_at(ops_addr, ops_size)
        for slot in (SLOT_FALLOCATE, SLOT_LSEEK):
            if ops[slot * _PTR:(slot + 1) * _PTR] != bytes(_PTR):
                return f"pyfuse3 already registers slot {slot}; not replacing it"
        session = ctypes.c_void_p.from_address(base + syms[_SYM_SESSION][0]).value
        if not session:
            return "pyfuse3 has no session (install() must follow pyfuse3.init())"
        window = ctypes.string_at(session, _SESSION_SEARCH + ops_size)
        hits = [o for o in range(0, _SESSION_SEARCH, _PTR) if window[o:o + ops_size] == ops]
        if len(hits) != 1:
            return f"found the ops table {len(hits)} times in the FUSE session, expected once"
        copy = session + hits[0]
        libfuse = _Libfuse()
    except (OSError, ValueError, AttributeError, struct.error) as e:
        return f"cannot locate pyfuse3's FUSE session: {e}"

    def fallocate(req, ino, mode, offset, length, _fi):
        try:
            fallocate_handler(ino, mode, offset, length)
            err = 0
        except BaseException as e:   # a C callback must not raise; the request must get a reply
            err = _errno_of(e)
        libfuse.reply_err(req, err)

    def lseek(req, ino, offset, whence, _fi):
        try:
            pos = lseek_handler(ino, offset, whence)
        except BaseException as e:
            libfuse.reply_err(req, _errno_of(e))
            return
        libfuse.reply_lseek(req, pos)

    c_fallocate = _FALLOCATE(fallocate)
    c_lseek = _LSEEK(lseek)
    # Keep the C thunks alive for as long as the session can call them.
    _installed.extend((c_fallocate, c_lseek, libfuse))
    ctypes.c_void_p.from_address(copy + SLOT_FALLOCATE * _PTR).value = ctypes.cast(c_fallocate, ctypes.c_void_p).value
    ctypes.c_void_p.from_address(copy + SLOT_LSEEK * _PTR).value = ctypes.cast(c_lseek, ctypes.c_void_p).value
    return None


_installed: list = []


def _errno_of(e: BaseException) -> int:
    code = getattr(e, "errno", None)
    if isinstance(code, int) and code > 0:
        return code
    log.error("FUSE fallocate/lseek handler failed: %r", e)
    return errno.EIO
