"""The control socket's wire format: JSON lines, version 1.

One request per line, one response per line, in order, UTF-8 JSON objects
terminated by ``\\n``. A connection may carry any number of requests; the first
one should be ``hello`` so that each side knows the other's version.

Request fields:

=========  ======  ===========================================================
field      type    meaning
=========  ======  ===========================================================
``v``      int     protocol version the client speaks (this module: 1)
``id``     int     chosen by the client, echoed in the response
``op``     str     operation, from the table below
``args``   object  operation arguments (may be omitted when there are none)
=========  ======  ===========================================================

Response fields:

=========  ======  ===========================================================
field      type    meaning
=========  ======  ===========================================================
``v``      int     protocol version the server speaks
``id``     int     the request's ``id`` (``null`` if the request was unreadable)
``ok``     bool    true: ``result`` is set; false: ``error`` is set
``result`` any     the operation's result (JSON)
``error``  object  ``{"class": str, "message": str, "exit_code": int}``: the
                   name of the :mod:`vdisk.errors` class the server raised, its
                   one-line message and the CLI exit code it carries
=========  ======  ===========================================================

Operations (``args`` -> ``result``):

===================  ======================  ==================================
op                   args                    result
===================  ======================  ==================================
``hello``            ``{}``                  ``{"server": "vdisk", "version",
                                             "disk", "owner", "pid",
                                             "readonly"}``
``info``             ``{}``                  ``Disk.info()``
``snapshot_list``    ``{"exclusive": bool}`` list of snapshot objects
``snapshot_create``  ``{"name": str}``       the new snapshot object
``snapshot_delete``  ``{"name": str}``       ``{"freed_blocks": int}``
``snapshot_revert``  ``{"name": str}``       ``null``
``snapshot_rename``  ``{"name": str,         the renamed snapshot object
                     "new_name": str}``
``resize``           ``{"size": int}``       ``null``
``flush``            ``{}``                  ``null``
``compact``          ``{}``                  bytes returned to the file system
``shutdown``         ``{}``                  ``null`` once the disk is flushed
                                             and closed; the front end stops
                                             serving I/O (``vdisk serve``
                                             uses it to stop an nbdkit whose
                                             clients stay connected)
===================  ======================  ==================================

A snapshot object has the fields of :class:`vdisk.disk.SnapshotInfo`
(``name``, ``created``, ``seq``, ``size``, ``parent``, ``exclusive_bytes``).

A request with a different ``v`` gets an ``UnsupportedVersion`` error; the
server never guesses. Lines longer than :data:`MAX_LINE` are refused with an
``InvalidArgument`` error and the connection is closed (the rest of such a
line cannot be told apart from the next request).
"""

from __future__ import annotations

import json

from vdisk import errors

VERSION = 1
MAX_LINE = 1 << 20

SOCKET_NAME = "control.sock"

OPS = ("hello", "info", "snapshot_list", "snapshot_create", "snapshot_delete",
       "snapshot_revert", "snapshot_rename", "resize", "flush", "compact", "shutdown")


class ProtocolError(errors.InvalidArgument):
    """A message that is not a valid request or response of this version."""


def encode(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def request(req_id: int, op: str, args: dict | None = None) -> bytes:
    return encode({"v": VERSION, "id": req_id, "op": op, "args": args or {}})


def ok(req_id, result) -> bytes:
    return encode({"v": VERSION, "id": req_id, "ok": True, "result": result})


def error(req_id, exc: BaseException) -> bytes:
    """Encode ``exc``; anything that is not a VdiskError is reported as one."""
    if isinstance(exc, errors.VdiskError):
        cls, code = type(exc).__name__, exc.exit_code
    else:
        cls, code = "VdiskError", errors.VdiskError.exit_code
    return encode({"v": VERSION, "id": req_id, "ok": False,
                   "error": {"class": cls, "message": str(exc), "exit_code": code}})


def decode_request(line: bytes) -> tuple[object, str, dict]:
    """(id, op, args) of one request line; ProtocolError if it is not one.

    The id is returned as soon as it can be read, inside the error, so that
    the reply to a bad request still names it.
    """
    msg = _decode_object(line)
    req_id = msg.get("id")
    if not isinstance(req_id, int) or isinstance(req_id, bool):
        req_id = None
    v = msg.get("v")
    # JSON true and 1.0 equal 1 in Python; the version is the integer 1.
    if type(v) is not int or v != VERSION:
        raise _with_id(errors.UnsupportedVersion(
            f"control protocol version {v!r} is not supported (this server speaks {VERSION})"), req_id)
    if req_id is None:
        raise _with_id(ProtocolError("request has no integer 'id'"), None)
    op = msg.get("op")
    if not isinstance(op, str):
        raise _with_id(ProtocolError("request has no 'op' string"), req_id)
    args = msg.get("args", {})
    if not isinstance(args, dict):
        raise _with_id(ProtocolError("request 'args' must be an object"), req_id)
    return req_id, op, args


def decode_response(line: bytes) -> dict:
    """The response object; ProtocolError if it is malformed."""
    msg = _decode_object(line)
    if msg.get("v") != VERSION:
        raise errors.UnsupportedVersion(
            f"control server speaks protocol version {msg.get('v')!r}, this vdisk speaks {VERSION}")
    if not isinstance(msg.get("ok"), bool):
        raise ProtocolError("control response has no 'ok' flag")
    if not msg["ok"]:
        err = msg.get("error")
        if (not isinstance(err, dict) or not isinstance(err.get("class"), str)
                or not isinstance(err.get("message"), str) or not isinstance(err.get("exit_code"), int)):
            raise ProtocolError("control error response lacks class, message or exit_code")
    return msg


def exception_from(err: dict) -> errors.VdiskError:
    """Rebuild the server's exception: same class when vdisk knows it, same exit code."""
    cls = getattr(errors, err["class"], None)
    if not (isinstance(cls, type) and issubclass(cls, errors.VdiskError)) or cls is errors.CorruptNode:
        cls = errors.VdiskError
    exc = cls.__new__(cls)
    errors.VdiskError.__init__(exc, err["message"])
    if exc.exit_code != err["exit_code"]:
        exc.exit_code = err["exit_code"]
    return exc


def request_id_of(exc: BaseException):
    return getattr(exc, "control_request_id", None)


def _with_id(exc: BaseException, req_id):
    exc.control_request_id = req_id
    return exc


def _decode_object(line: bytes) -> dict:
    try:
        msg = json.loads(line)
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(f"control message is not JSON: {e}") from None
    except RecursionError:
        raise ProtocolError("control message is nested too deeply") from None
    if not isinstance(msg, dict):
        raise ProtocolError("control message must be a JSON object")
    return msg
