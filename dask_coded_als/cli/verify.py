"""``dask-coded-als verify``: read every chunk of a store and check its layout's invariants."""

from __future__ import annotations

import argparse
import sys

from dask_coded_als.cli.options import EXIT_CODES, as_flags


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="read every chunk of a store, check checksums, shapes and invariants",
        description="Prints one line per problem found; exit code 0 only when there is none.",
    )
    p.add_argument("store")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dask_coded_als.data.verify import verify_store

    report = verify_store(args.store)
    for note in report.notes:
        print(f"dask-coded-als: note: {as_flags(note)}", file=sys.stderr)
    for problem in report.problems:
        print(as_flags(problem))
    count = len(report.problems)
    found = f"{count} problem{'s' if count > 1 else ''}" if count else "no problems"
    print(f"{args.store}: {report.arrays} arrays, {report.chunks} chunks read, {found}")
    return EXIT_CODES["ok"] if report.clean else EXIT_CODES["input"]
