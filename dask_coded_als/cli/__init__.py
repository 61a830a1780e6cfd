"""Command-line interface: ``dask-coded-als SUBCOMMAND ...``, one module per subcommand.

Thin by design: a subcommand parses its options, calls the public API and prints. Failures map to
exit codes (:data:`EXIT_CODES`) with a one-line message that speaks of flags, never a traceback
(``-v`` adds it). Long work shows progress bars on a terminal (:mod:`.progress`).
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
import warnings
from collections.abc import Callable

from dask_coded_als import __version__
from dask_coded_als._util import one_line
from dask_coded_als.cli import demo, evaluate, experiments, fit, ingest, recommend, verify
from dask_coded_als.cli.options import EXIT_CODES, Parser, as_flags, next_step

__all__ = ["EXIT_CODES", "build_parser", "main"]

COMMANDS = (ingest, fit, recommend, evaluate, experiments, demo, verify)


def _add_common_options(p: argparse.ArgumentParser, after: bool = False) -> None:
    """-v and -q, before the subcommand and (``after``) after it. After it they default to
    SUPPRESS, so that the subcommand's parser leaves a flag given before it alone."""
    default = argparse.SUPPRESS if after else False
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="log each phase, and print the traceback of an internal error",
    )
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default,
        help="no progress: neither the bars drawn on a terminal nor the fit's lines per round "
        "written elsewhere",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="dask-coded-als",
        description="Coded alternating least squares on Dask, tolerant of slow and dead workers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_common_options(parser)
    sub = parser.add_subparsers(
        dest="command",
        metavar="COMMAND",
        parser_class=Parser,
        help="`dask-coded-als COMMAND -h` lists its options",
    )
    for command in COMMANDS:
        command.add_parser(sub)
    for command_parser in sub.choices.values():
        _add_common_options(command_parser, after=True)
    return parser


def _drop_defaults(parser: argparse.ArgumentParser) -> None:
    """Make every argument of ``parser`` and its subcommands default to absent."""
    # argparse keeps its actions and set_defaults() values in private attributes; it has no
    # public way to ask whether an option was given.
    parser._defaults.clear()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
        if isinstance(action, argparse._SubParsersAction):
            for command_parser in action.choices.values():
                _drop_defaults(command_parser)


def given_options(argv: list[str] | None) -> frozenset[str]:
    """The destinations of the options ``argv`` gives, as opposed to those left at their
    defaults (``fit --resume`` takes the others from the checkpoint)."""
    probe = build_parser()
    _drop_defaults(probe)
    return frozenset(vars(probe.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # The words as typed, for messages that give a command to run next (fit --resume).
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        parser.print_help()
        return 0
    args.given = given_options(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    if not args.verbose:
        # distributed logs worker restarts and cancelled tasks; the engine reports what matters.
        # (distributed.client has its own level and handler: a lost scheduler logs there.)
        for name in ("distributed", "distributed.client"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    from dask_coded_als.errors import ClusterError, InputError, NumericalError

    prog = parser.prog

    def fail(kind: str, exc: BaseException, code: str) -> int:
        message = next_step(as_flags(one_line(exc)))
        if code == "internal" and not args.verbose:
            message += " (-v shows the traceback)"
        print(f"{prog}: {kind}{message}", file=sys.stderr)
        if args.verbose:
            traceback.print_exception(exc, file=sys.stderr)
        return EXIT_CODES[code]

    try:
        with warnings.catch_warnings():
            warnings.showwarning = _notes(prog, warnings.showwarning)
            return args.func(args)
    except NumericalError as exc:
        return fail("numerical error: ", exc, "numerical")
    except ClusterError as exc:
        return fail("cluster error: ", exc, "cluster")
    except (InputError, ValueError, FileNotFoundError) as exc:
        return fail("error: ", exc, "input")
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_CODES["interrupt"]
    except Exception as exc:  # the promise is one line, never a traceback
        return fail(f"internal error: {type(exc).__name__}: ", exc, "internal")


def _notes(prog: str, show: Callable[..., None]) -> Callable[..., None]:
    """``warnings.showwarning`` that prints the package's notes (a store without checksums) as
    one line, and passes every other warning on to ``show``."""
    from dask_coded_als.data.checksums import UncheckedStoreWarning

    def note(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, UncheckedStoreWarning):
            print(f"{prog}: note: {as_flags(str(message))}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    return note
