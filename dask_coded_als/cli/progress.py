"""Progress of long work: tqdm bars on stderr, with the time left.

Bars are drawn only when stderr is a terminal and neither ``--quiet`` nor ``--json`` is given
(a bar's carriage returns would garble a log file, and ``--json`` is for programs). Away from a
terminal a fit prints one line per round instead, for logs; ``--quiet`` and ``--json`` silence
those too. Everything goes to stderr, so stdout (``--json`` output included) is never touched.

The library reports progress through callables (``progress(done, total)`` of
:func:`dask_coded_als.ingest`, :func:`dask_coded_als.data.store.compute_gram` and
:meth:`dask_coded_als.CodedALS.fit`, and the fit's per-round ``callback``); this module supplies
them.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator

from tqdm import tqdm

__all__ = ["bar", "on_terminal", "round_lines", "rounds", "shown"]


def on_terminal() -> bool:
    """Whether stderr is a terminal (tests replace this to draw bars into a captured stream)."""
    return sys.stderr.isatty()


def _silent(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "quiet", False) or getattr(args, "json", False))


def shown(args: argparse.Namespace) -> bool:
    """Whether to draw bars for this command line."""
    return not _silent(args) and on_terminal()


def _bar(desc: str, unit: str, total: int | None = None, initial: int = 0) -> tqdm:
    in_bytes = unit == "B"
    return tqdm(
        desc=desc,
        total=total,
        initial=initial,
        unit=unit,
        unit_scale=in_bytes,
        unit_divisor=1024 if in_bytes else 1000,
        file=sys.stderr,
        dynamic_ncols=True,
    )


@contextlib.contextmanager
def _closing(t: tqdm) -> Iterator[tqdm]:
    """Close the bar at the end; on an error, erase it, so that the error's line stands alone."""
    try:
        yield t
    except BaseException:
        t.leave = False
        raise
    finally:
        t.close()


@contextlib.contextmanager
def bar(
    args: argparse.Namespace, desc: str, unit: str, then: str | None = None
) -> Iterator[Callable[[int, int], None] | None]:
    """A ``progress(done, total)`` callable drawing a bar of ``unit`` (``"B"``: bytes, shown
    scaled), or None when bars are not shown.

    When ``done`` reaches ``total`` the bar shows ``then``, the work that follows without a
    measure of its own, until the block ends; without ``then`` it closes, so that a bar opened
    after it starts on the next line.
    """
    if not shown(args):
        yield None
        return
    with _closing(_bar(desc, unit)) as t:

        def update(done: int, total: int) -> None:
            if t.total != total:
                t.total = total
            t.update(done - t.n)
            if done < total:
                return
            if then is None:
                t.close()
            else:
                t.set_postfix_str(then)

        yield update


def round_lines(entry: dict) -> None:
    """A fit callback printing one line per round (for logs)."""
    stage = entry["stages"]["E"]
    late = stage["late"] + stage["failed"]
    print(
        f"iteration {entry['iteration']:3d}  {entry['time']:6.2f} s  "
        f"first-K {stage['seconds']:6.2f} s  late {late}  objective {entry['objective']:.6e}",
        file=sys.stderr,
        flush=True,
    )


@contextlib.contextmanager
def rounds(
    args: argparse.Namespace, max_iter: int, start: int = 0
) -> Iterator[Callable[[dict], None] | None]:
    """The fit's callback: on a terminal a bar of rounds (``max_iter + 1`` at most, ``start``
    done before a resume) showing the last round's objective and its used and late workers;
    elsewhere :func:`round_lines`; None with ``--quiet`` or ``--json``.

    The bar opens with the first round, after the bars of the work before it have closed; a fit
    that converges early ends its bar full.
    """
    if _silent(args):
        yield None
        return
    if not on_terminal():
        yield round_lines
        return
    with contextlib.ExitStack() as stack:
        bars: list[tqdm] = []

        def report(entry: dict) -> None:
            if not bars:
                t = _bar("fit", "round", total=max_iter + 1, initial=start)
                bars.append(stack.enter_context(_closing(t)))
            stage = entry["stages"]["E"]  # the exchange of every mode and protocol
            late = len(stage["late"]) + len(stage["failed"])
            bars[0].set_postfix_str(
                f"objective {entry['objective']:.4e}, used {len(stage['used'])}/"
                f"{args.workers}, late {late}",
                refresh=False,
            )
            bars[0].update(entry["iteration"] + 1 - bars[0].n)

        yield report
        for t in bars:  # converged early or not, the fit has made all its rounds
            t.total = t.n
            t.refresh()
