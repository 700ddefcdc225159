"""The `skyexport` command: export, import, info, verify, synth, demo, fetch, completion.

Results go to stdout (the last line of `export` is the export directory), progress and
errors to stderr.  Exit status: 0 done, 1 failed (one line, no traceback), 2 usage,
130 interrupted (SIGINT), 143 terminated (SIGTERM), 141 stdout closed early (`| head`).

This module is the entry point: main() parses (parser.py), runs the command's module
(export.py, import_car.py, info.py, verify.py, synth.py, demo.py, fetch.py,
completion.py: each a `run(args)`) and turns what escapes it into one line and an exit
status; render.py holds what they share.  Imports are lazy so that start-up stays close
to the interpreter's own.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

from .parser import build_parser, subparser
from .render import EXIT_INT, EXIT_PIPE, EXIT_TERM, Terminated, fail

# typing is not imported at run time: start-up is part of every export.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import Any, TextIO


def _fill_closed_descriptors() -> None:
    """Standard descriptors closed at start (`skyexport info >&-`) are opened on the null
    device, as daemons do: else the next file opened (the data file, the archive) would
    take the number, and a stray write to "stdout" or "stderr" would land in it.  Python
    has already set sys.stdout/sys.stderr to None for them; main() reads that."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def _closed_streams() -> tuple[bool, bool]:
    """Whether stdout and stderr were closed, each replaced by a writer to the null device
    (a closed stderr loses the messages, never the result; a closed stdout is checked by
    the commands whose result it carries)."""
    closed = []
    for name in ("stdout", "stderr"):
        gone = getattr(sys, name) is None
        if gone:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115
        closed.append(gone)
    return closed[0], closed[1]


# The commands whose result is what they print on stdout; with stdout closed they fail at
# once (exit 1), before doing any work.  The others deliver a file (export to a directory,
# import, synth) or an exit status (verify): they run, and their lines are lost.
_PRINTS_ITS_RESULT = {"info": "its answer", "completion": "the script",
                      "demo": "the numbers it measures"}




class _StdoutFailed(Exception):
    """Writing a command's result to stdout failed (a full disk, an I/O error): the one
    line says so, whatever the command; a closed pipe stays BrokenPipeError."""


class _GuardedStdout:
    """sys.stdout while a command runs: a write or flush that fails, other than with
    BrokenPipeError, raises _StdoutFailed, so that main() can tell stdout's failure from
    an OSError of the command's own (the archive, the output directory)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _StdoutFailed(exc.strerror or str(exc)) from exc

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _StdoutFailed(exc.strerror or str(exc)) from exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def _command(name: str) -> Callable[[argparse.Namespace], int]:
    """The `run(args)` of the command `name`: its module, imported only now."""
    if name == "export":
        from .export import run
    elif name == "import":
        from .import_car import run
    elif name == "info":
        from .info import run
    elif name == "verify":
        from .verify import run
    elif name == "synth":
        from .synth import run
    elif name == "demo":
        from .demo import run
    elif name == "fetch":
        from .fetch import run
    elif name == "completion":
        from .completion import run
    else:
        raise LookupError(name)
    return run


def main(argv: Sequence[str] | None = None) -> int:
    stream = sys.stdout
    if stream is None or isinstance(stream, _GuardedStdout):
        return _main(argv)
    sys.stdout = _GuardedStdout(stream)
    try:
        return _main(argv)
    finally:
        sys.stdout = stream


def _main(argv: Sequence[str] | None) -> int:
    stdout_closed, _ = _closed_streams()
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        # Reported by the subcommand, with its usage and the closest option it has.
        sub = subparser(parser, args.command)
        sub.unknown(extras)
    args.subparser = subparser(parser, args.command)
    from ..errors import ExportError

    if stdout_closed and (args.command in _PRINTS_ITS_RESULT or (
            args.command == "export" and args.output == "-")):
        what = _PRINTS_ITS_RESULT.get(args.command, "the data file (--output -)")
        return fail(f"stdout is closed, and `skyexport {args.command}` writes "
                     f"{what} there; nothing was done (redirect it to a file instead)")
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _command(args.command)(args)
    except ExportError as exc:
        return fail(str(exc))
    except (KeyboardInterrupt, Terminated) as exc:
        word, code = (("interrupted", EXIT_INT) if isinstance(exc, KeyboardInterrupt)
                      else ("terminated", EXIT_TERM))
        published = getattr(exc, "published_directory", None) or getattr(
            args, "published", None)
        done = getattr(args, "streamed", None)  # export -o - returned: all of it went out
        streamed = done.bytes_written if done else getattr(exc, "stream_bytes", 0)
        sha256 = done.sha256 if done else getattr(exc, "stream_sha256", None)
        if sha256 is not None:
            sys.stderr.write(f"skyexport: {word} after the export was complete; all "
                             f"{streamed} bytes had gone to stdout, sha256 {sha256}\n")
        elif streamed:
            sys.stderr.write(f"skyexport: {word}; {streamed} bytes had already gone to "
                             "stdout: an incomplete export, discard them\n")
        elif published is None:
            # what was left undone, by command: info changes nothing at all
            undone = {"import": "; nothing was imported (the archive is as it was)",
                      "info": ""}.get(args.command, "; nothing was exported")
            sys.stderr.write(f"skyexport: {word}{undone}\n")
        else:
            # The signal came after the final rename: the export is whole and visible.
            sys.stderr.write(f"skyexport: {word} after the export was complete; it is "
                             f"published, whole, at {published}\n")
            try:
                sys.stdout.write(f"{published}\n")
            except (OSError, ValueError):
                pass
        return code
    except _StdoutFailed as exc:
        return fail(f"writing to stdout failed: {exc}; what was printed is incomplete")
    except MemoryError:
        return fail("out of memory; lower --batch-size or free memory")
    except BrokenPipeError:
        # stdout closed early (`| head`): not an error of ours; quiet, as a program killed
        # by SIGPIPE, with its status (128 + 13).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE
    except Exception as exc:
        # A bug of ours, not bad input: still one line, unless asked for the traceback.
        if os.environ.get("SKYEXPORT_TRACEBACK"):
            raise
        return fail(f"unexpected {type(exc).__name__}: {exc} (set SKYEXPORT_TRACEBACK=1 "
                     "for details and please report it)")
    finally:
        signal.signal(signal.SIGTERM, previous)


def run() -> None:
    """The `skyexport` command: main(), then exit at once.  By then every file is closed
    and fsync'd and every thread joined; skipping the interpreter's orderly teardown saves
    a tenth of a small export's time."""
    _fill_closed_descriptors()
    code = main()
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        pass
    except OSError as exc:  # /dev/full, an I/O error: what was printed did not arrive
        code = fail(f"writing to stdout failed: {exc.strerror or exc}") if code == 0 \
            else code
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # a message lost never changes the outcome
    os._exit(code)


if __name__ == "__main__":
    run()

