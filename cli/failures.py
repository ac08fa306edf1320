"""The one error path of the ``vdisk`` command.

Whatever goes wrong - a usage error click finds, an engine error, an OS
error, Ctrl-C, a bug - the user sees one line on stderr::

    vdisk: error: <what is wrong and what to do>

and the exit code of :data:`vdisk.errors.EXIT_CODES` for its cause, the same
from every command. With ``--json`` the error is also printed on stdout as
``{"error": {...}}``, so a script reading stdout always gets JSON. No
traceback unless ``--debug`` (or ``VDISK_DEBUG=1``).
"""

from __future__ import annotations

import errno
import os
import re
import sys
import traceback
from types import SimpleNamespace

import click

from vdisk.errors import (EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_PIPE, InvalidArgument, VdiskError,
                          from_os_error, quote)

# Set while parsing (--debug, --json), read when something fails.
STATE = SimpleNamespace(debug=bool(os.environ.get("VDISK_DEBUG")), json=False)


class PipeClosed(Exception):
    """stdout's reader went away (``vdisk snapshot list D | head -1``).

    Not an OSError, so click's own handling of EPIPE (exit 1, which is
    verify's "problems found") does not see it.
    """


class CommandFailed(VdiskError):
    """An error with the command's context added, keeping the cause's code and kind."""

    def __init__(self, message: str, cause: VdiskError):
        super().__init__(message)
        self.exit_code = cause.exit_code
        self.errno = cause.errno
        self.kind = getattr(cause, "kind", type(cause).__name__)


def one_line(message: str) -> str:
    parts = [p.strip() for p in str(message).splitlines() if p.strip()]
    return "; ".join(parts)


def run(invoke, argv: list[str]) -> int:
    """Run ``invoke()`` (click's main, not standalone) and return the exit code."""
    # Known from argv too, for when parsing fails before the option is reached.
    options = argv[:argv.index("--")] if "--" in argv else argv
    STATE.json = "--json" in options
    STATE.debug = bool(os.environ.get("VDISK_DEBUG")) or "--debug" in options
    try:
        rv = invoke()
    except SystemExit:
        raise
    except PipeClosed:
        _silence_stdout()
        return EXIT_PIPE
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.UsageError as e:
        return _report(_usage_message(e), InvalidArgument.exit_code, "UsageError", e)
    except click.ClickException as e:
        # click's own default, 1, is verify's "problems found".
        return _report(e.format_message(), InvalidArgument.exit_code, type(e).__name__, e)
    except (click.Abort, KeyboardInterrupt) as e:
        return _report("interrupted", EXIT_INTERRUPTED, "Interrupted", e)
    except VdiskError as e:
        return _report(str(e), e.exit_code, getattr(e, "kind", type(e).__name__), e)
    except OSError as e:
        if e.errno == errno.EPIPE:
            _silence_stdout()
            return EXIT_PIPE
        err = from_os_error(e)
        return _report(str(err), err.exit_code, type(err).__name__, e)
    except Exception as e:
        return _report(f"internal error: {type(e).__name__}: {e} (a bug in vdisk; run with --debug for "
                       f"the traceback and report it)", EXIT_INTERNAL, "InternalError", e)
    return rv if isinstance(rv, int) and not isinstance(rv, bool) else 0


def _report(message: str, code: int, kind: str, exc: BaseException) -> int:
    if STATE.debug:
        traceback.print_exception(exc, file=sys.stderr)
    line = one_line(message)
    try:
        if kind == "Interrupted" and sys.stderr.isatty():
            sys.stderr.write("\n")      # after the terminal's ^C
        if STATE.json:
            import json
            click.echo(json.dumps({"error": {"message": line, "kind": kind, "exit_code": code}}))
        click.echo(f"vdisk: error: {line}", err=True)
    except OSError:
        pass
    return code


def _silence_stdout():
    # Python flushes stdout at exit; into a closed pipe that is one more
    # error and a message. Point it at /dev/null instead.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _usage_message(e: click.UsageError) -> str:
    msg = e.format_message().strip().rstrip(".")
    if isinstance(e, click.NoSuchOption) and e.ctx is not None and re.fullmatch(r"-\d[\d.]*[A-Za-z]*", e.option_name):
        from .sizes import SizeType
        if any(isinstance(p.type, SizeType) for p in e.ctx.command.params):
            return f"bad size {e.option_name!r}: a size cannot be negative"
    if msg[:1].isupper() and msg[1:2].islower():
        msg = msg[0].lower() + msg[1:]
    if e.ctx is not None:
        msg += f" (see: {e.ctx.command_path} --help)"
    return msg


def unknown_command(ctx: click.Context, name: str, commands: list[str]) -> str:
    """The message for ``vdisk NAME`` when there is no command NAME."""
    hint = {"version": f"the version is printed by: {ctx.command_path} --version",
            "help": f"help is printed by: {ctx.command_path} --help or {ctx.command_path} COMMAND --help"}.get(name)
    if hint is None:
        import difflib
        close = difflib.get_close_matches(name, commands, n=1, cutoff=0.75)
        hint = f"did you mean '{ctx.command_path} {close[0]}'?" if close else None
    parts = [f"no command {quote(name)} in {ctx.command_path}", hint, f"commands: {', '.join(commands)}"]
    return "; ".join(p for p in parts if p)
