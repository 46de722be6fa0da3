"""Command line: ``napari-focsam segment | segment-all | track | weights | precompute | evaluate | evaluate-3d | train | train-cache | demo | gui``.

One module per sub-command, each with ``add_parser(subparsers)`` and ``run(args) -> int``;
this module builds the parser and applies the one error policy. Every sub-command prints one
line of JSON (or a table) on stdout on success; notes and progress go to stderr. On bad input
it exits non-zero with one line ``napari-focsam: error: ...`` on stderr, never a traceback:

* :class:`~napari_focsam.errors.UserError` (a bad path, option or image): exit 2;
* ``ValueError``, ``OSError``, ``RuntimeError`` (a damaged checkpoint, missing weights, an
  unwritable file): exit 1;
* Ctrl-C: exit 130.

The sub-command modules import the engine inside ``run`` only, so that ``--help`` stays light.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import UserError
from . import demo, evaluate, evaluate_3d, gui, precompute, segment, segment_all, segment_batch, track, train, weights
from ._common import join_negative_values

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILURE", "EXIT_INTERRUPTED", "UserError", "build_parser", "main"]

EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

#: The sub-command modules, in the order ``--help`` lists them.
COMMANDS = (segment, segment_batch, segment_all, track, weights, precompute, evaluate, evaluate_3d, train, demo,
            gui)


def build_parser() -> argparse.ArgumentParser:
    """The ``napari-focsam`` parser with every sub-command."""
    from .. import __version__

    parser = argparse.ArgumentParser(prog="napari-focsam", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"napari-focsam {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def error_message(exc: BaseException, command: str | None = None) -> tuple[str, int]:
    """The one error policy: the line to print (without the prefix) and the exit code.

    Raises ``exc`` again for anything that is a bug rather than a user-facing failure.
    """
    if isinstance(exc, UserError):
        return str(exc), EXIT_BAD_INPUT
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", EXIT_INTERRUPTED
    if isinstance(exc, (ValueError, OSError, RuntimeError)):
        # CheckpointError is a ValueError, WeightsUnavailableError a RuntimeError, missing or
        # unwritable files are OSErrors. The weights error keeps its extra lines (the manual
        # download step), except under `weights`, where it is one line for scripts.
        from ..core.models.weights import WeightsUnavailableError

        if isinstance(exc, WeightsUnavailableError):
            return (exc.summary() if command == "weights" else str(exc)), EXIT_FAILURE
        return " ".join(str(exc).split()), EXIT_FAILURE
    raise exc


def main(argv: list[str] | None = None) -> int:
    """Run ``napari-focsam`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(join_negative_values(argv))
    _log_to_stderr()
    try:
        return int(args.func(args) or 0)
    except (UserError, KeyboardInterrupt, ValueError, OSError, RuntimeError) as exc:
        text, code = error_message(exc, args.command)
        prefix = "napari-focsam: " if code == EXIT_INTERRUPTED else "napari-focsam: error: "
        print(prefix + text, file=sys.stderr)
        return code


class _StderrHandler(logging.Handler):
    """Writes to the current ``sys.stderr`` (not the one at creation) as ``napari-focsam: warning: ...``."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"napari-focsam: {record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)


def _log_to_stderr() -> None:
    """The package's warnings (a blank slice, a rebuilt cache) as one line each on stderr."""
    log = logging.getLogger("napari_focsam")
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        log.addHandler(_StderrHandler(logging.WARNING))
