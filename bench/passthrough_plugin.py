"""The benchmark's "trivial Python passthrough" peer: an nbdkit Python plugin
that forwards every request to a raw file, and does nothing else.

    nbdkit -U SOCK python bench/passthrough_plugin.py file=RAW

It shows what nbdkit's embedded Python costs per request before any vdisk
work; vdisk's NBD rows are compared with it. Same thread model as the vdisk
plugin (serialize all requests), same features that fio uses.
"""

import errno
import os

import nbdkit

API_VERSION = 2

_path = None


def config(key, value):
    global _path
    if key != "file":
        raise RuntimeError("unknown parameter %r (only file=RAW)" % key)
    _path = os.path.abspath(value)


def config_complete():
    if _path is None:
        raise RuntimeError("missing file=RAW")


def thread_model():
    return nbdkit.THREAD_MODEL_SERIALIZE_ALL_REQUESTS


def open(readonly):
    return os.open(_path, os.O_RDONLY if readonly else os.O_RDWR)


def close(fd):
    os.close(fd)


def get_size(fd):
    return os.fstat(fd).st_size


def can_flush(fd):
    return True


def can_fua(fd):
    return nbdkit.FUA_EMULATE


def can_multi_conn(fd):
    return True


def pread(fd, buf, offset, flags):
    n = os.preadv(fd, [buf], offset)
    if n != len(buf):
        nbdkit.set_error(errno.EIO)
        raise OSError(errno.EIO, "short read")


def pwrite(fd, buf, offset, flags):
    view = memoryview(buf)
    while len(view):
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def flush(fd, flags):
    os.fdatasync(fd)
