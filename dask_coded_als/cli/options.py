"""What the subcommands share: the parser and its help, option types, the model and cluster
options, and turning the library's messages into the command line's words (flags, next steps)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
from distributed import Client

__all__ = [
    "COMMON_HELP",
    "EXIT_CODES",
    "FLAGS",
    "HelpFormatter",
    "NEXT_STEPS",
    "PHRASES",
    "Parser",
    "add_cluster_options",
    "add_model_options",
    "as_flags",
    "client_from_args",
    "fit_summary",
    "fraction",
    "model_from_args",
    "next_step",
    "non_negative_float",
    "non_negative_int",
    "partition",
    "positive_int",
    "print_metrics",
    "print_rows",
]

#: Exit codes: 0 success, 1 unexpected internal error, 2 bad input or usage, 3 cluster
#: failure, 4 numerical failure (rank-deficient data, non-finite factors), 130 interrupted.
EXIT_CODES = {"ok": 0, "internal": 1, "input": 2, "cluster": 3, "numerical": 4, "interrupt": 130}

#: Help of arguments that several subcommands have, by destination; an argument added without
#: help takes it from here.
COMMON_HELP = {
    "store": "the ratings store, a directory written by `dask-coded-als ingest`",
    "json": "print the result as JSON on stdout",
    "user": "the user's id, as in the ratings file",
    "item": "the item's id, as in the ratings file",
    "n": "how many items to list",
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to an option's help, except where X says nothing: a flag's
    False, or None, whose meaning the help text then says in words."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or isinstance(action.default, bool) or "default" in text:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse that shows every option's default, fills in the help of the arguments in
    :data:`COMMON_HELP`, and reports usage errors in one line with the input exit code."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        if action.help is None:
            action.help = COMMON_HELP.get(action.dest)
        return action

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_CODES["input"], f"{self.prog}: error: {message}\n")


# ---- option types ----------------------------------------------------------------------------


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not np.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    value = non_negative_float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}")
    return value


def partition(text: str) -> tuple[int, int] | str:
    """``auto`` or ``P,R`` (two positive integers)."""
    if text == "auto":
        return text
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected auto or P,R, got {text!r}")
    p, r = (positive_int(part.strip()) for part in parts)
    return p, r


# ---- the library's parameters as flags ---------------------------------------------------------

#: Library parameter -> command-line flag, for messages.
FLAGS = {
    "n_factors": "--factors",
    "n_workers": "--workers",
    "n_stragglers": "--stragglers",
    "h": "--h",
    "partition": "--partition",
    "mode": "--mode",
    "protocol": "--protocol",
    "straggler_model": "--straggler-model",
    "straggler_delay": "--straggler-delay",
    "points": "--points",
    "max_iter": "--iterations",
    "tol": "--tol",
    "regularization": "--regularization",
    "seed": "--seed",
    "stage_timeout": "--stage-timeout",
    "verify": "--verify",
    "dtype": "--dtype",
    "recovery_timeout": "--recovery-timeout",
    "scheduler": "--scheduler",
    "scheduler_file": "--scheduler-file",
    "tls_ca_file": "--tls-ca-file",
    "tls_cert": "--tls-cert",
    "tls_key": "--tls-key",
    "weighting": "--weighting",
}


#: Phrases of the library's messages whose parameters are plain words (format, sep, columns,
#: strict), which only in these phrases are parameters: pattern -> replacement.
PHRASES = (
    (r"\b(pass|is) format or sep\b", r"\1 --format or --sep"),
    (r"\bformat and sep do not apply\b", "--format and --sep do not apply"),
    (
        r"\bsep and columns apply to format='csv' or 'auto'",
        "--sep and --columns apply to --format csv or auto",
    ),
    (r"\bname (it|one) in columns\b", r"name \1 with --columns ROLE=NAME"),
    (r"\b(pass|give) columns\b", r"\1 --columns"),
    (r"\bstrict mode forbids duplicates\b", "--strict forbids duplicates"),
)


def as_flags(message: str) -> str:
    """A library message in the command line's words: ``overwrite=True`` becomes
    ``--overwrite``, ``n_factors=5`` becomes ``--factors 5``, ``tls_cert`` ``--tls-cert``, and
    the parameters of :data:`PHRASES` their flags.

    Examples
    --------
    >>> as_flags("n_stragglers=8 must be smaller than n_workers=8")
    '--stragglers 8 must be smaller than --workers 8'
    >>> as_flags("store exists; pass overwrite=True to replace it")
    'store exists; pass --overwrite to replace it'
    >>> as_flags("x.txt: cannot tell the format from the first line; pass format or sep")
    'x.txt: cannot tell the format from the first line; pass --format or --sep'
    """
    for pattern, replacement in PHRASES:
        message = re.sub(pattern, replacement, message)
    message = re.sub(r"\boverwrite=True\b", "--overwrite", message)
    message = re.sub(r"\bpartition=\((\d+), (\d+)\)", r"--partition \1,\2", message)
    for name, flag in FLAGS.items():
        message = re.sub(rf"(?<![\w-]){name}=(?=\S)", f"{flag} ", message)
        message = re.sub(rf"(?<![\w-]){name}=", flag, message)
        if "_" in name:  # a bare name with an underscore is never plain prose
            message = re.sub(rf"(?<![\w-]){name}\b", flag, message)
    return message


#: Messages that end where the next step is clear, and that step: pattern -> what to append
#: (``{store}`` is the store the message names).
NEXT_STEPS = (
    (r"^(?P<store>.+): no such store$", "; `dask-coded-als ingest RATINGS {store}` creates one"),
    (r"^(?P<store>.+): no factors stored$", "; run `dask-coded-als fit {store} --factors D`"),
    (
        r"^(?P<store>.+): the factors belong to another ingest$",
        "; run `dask-coded-als fit {store} --factors D` again",
    ),
)


def next_step(message: str) -> str:
    """``message`` with the command that comes next, when :data:`NEXT_STEPS` knows it.

    Examples
    --------
    >>> next_step("ml.zarr: no factors stored")
    'ml.zarr: no factors stored; run `dask-coded-als fit ml.zarr --factors D`'
    >>> next_step("ml.zarr: no factors stored; pass --refit --factors D")
    'ml.zarr: no factors stored; pass --refit --factors D'
    """
    for pattern, step in NEXT_STEPS:
        found = re.match(pattern, message)
        if found:
            return message + step.format(**found.groupdict())
    return message


# ---- the model and the cluster -------------------------------------------------------------------


def add_cluster_options(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on the cluster of this scheduler, e.g. tcp://127.0.0.1:8786 (default: start "
        "a LocalCluster of --workers processes on 127.0.0.1)",
    )
    group.add_argument(
        "--scheduler-file",
        metavar="FILE",
        help="run on the cluster whose scheduler wrote FILE (dask scheduler --scheduler-file)",
    )
    p.add_argument(
        "--connect-timeout",
        type=non_negative_float,
        default=20.0,
        metavar="SECONDS",
        help="how long to try to reach the scheduler",
    )
    p.add_argument("--tls-ca-file", metavar="FILE", help="CA certificate of a TLS cluster")
    p.add_argument("--tls-cert", metavar="FILE", help="client certificate of a TLS cluster")
    p.add_argument(
        "--tls-key", metavar="FILE", help="client private key (if --tls-cert does not hold it)"
    )


def add_model_options(
    p: argparse.ArgumentParser,
    factors: str,
    seed: str = "seeds the initial factor and the straggler model",
) -> None:
    """The model's options and the cluster's; ``factors`` says when --factors is needed,
    ``seed`` what --seed seeds."""
    from dask_coded_als.engine import DTYPES, MODES, PROTOCOLS
    from dask_coded_als.engine.stragglers import STRAGGLER_MODELS
    from dask_coded_als.recsys.weighting import WEIGHTINGS

    p.add_argument(
        "--factors", type=positive_int, metavar="D", help=f"d, the latent dimension ({factors})"
    )
    p.add_argument(
        "--weighting",
        choices=WEIGHTINGS,
        default="none",
        help="weigh R before the fit: none (ratings as given), binary (implicit feedback: every "
        "rating is 1), bm25 (implicit counts: popular items and heavy users weigh less)",
    )
    p.add_argument(
        "--workers", type=positive_int, default=8, metavar="W", help="W, the workers used"
    )
    p.add_argument(
        "--stragglers",
        type=non_negative_int,
        default=0,
        metavar="S",
        help="how many slow or dead workers every round tolerates; also how many the straggler "
        "model slows down",
    )
    p.add_argument(
        "--h",
        type=positive_int,
        default=None,
        metavar="H",
        help="the paper's h x h blocks of D, short for --partition H,H (default: the largest h "
        "that tolerates --stragglers)",
    )
    p.add_argument(
        "--partition",
        type=partition,
        default=None,
        metavar="P,R",
        help="the code: D's rows split P ways, its contraction R ways, or auto to measure the "
        "cluster and choose (default: from --h)",
    )
    p.add_argument(
        "--mode",
        choices=MODES,
        default="coded",
        help="coded: the paper's scheme; uncoded: wait for every worker; replication: the "
        "first of S+1 copies",
    )
    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="fast",
        help="fast: one exchange per iteration; paper: the paper's three (same iterates)",
    )
    p.add_argument(
        "--straggler-model",
        choices=STRAGGLER_MODELS,
        default="none",
        help="how --stragglers workers are slowed down or killed, for experiments",
    )
    p.add_argument(
        "--straggler-delay",
        type=non_negative_float,
        default=0.0,
        metavar="SECONDS",
        help="the straggler model's delay (or mean slowdown)",
    )
    p.add_argument(
        "--points",
        choices=("circle", "real"),
        default=None,
        help="evaluation points (default: real where they decode accurately for this W and "
        "threshold, else the circle)",
    )
    p.add_argument(
        "--verify",
        type=non_negative_int,
        default=0,
        metavar="E",
        help="find and leave out up to E wrong answers per iteration (collects K + 2E)",
    )
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float64",
        help="precision of D, the shards and the workers' products (float32: half the memory)",
    )
    p.add_argument(
        "--iterations",
        type=non_negative_int,
        default=50,
        metavar="T",
        help="at most this many updates of the factor",
    )
    p.add_argument(
        "--tol",
        type=non_negative_float,
        default=1e-9,
        help="stop when the objective's relative change falls below it",
    )
    p.add_argument(
        "--regularization",
        type=non_negative_float,
        default=0.0,
        metavar="L",
        help="ridge weight on the factors' squared norms",
    )
    p.add_argument("--seed", type=non_negative_int, default=0, help=seed)
    p.add_argument(
        "--stage-timeout",
        type=non_negative_float,
        default=120.0,
        metavar="SECONDS",
        help="how long an exchange may wait for the answers it needs before the fit fails",
    )
    p.add_argument(
        "--recovery-timeout",
        type=non_negative_float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for replacement workers when too few are alive",
    )
    add_cluster_options(p)
    p.add_argument("--json", action="store_true")


def model_from_args(args: argparse.Namespace) -> Any:
    from dask_coded_als.engine import CodedALS

    return CodedALS(
        n_factors=args.factors,
        n_workers=args.workers,
        h=args.h,
        partition=args.partition,
        n_stragglers=args.stragglers,
        mode=args.mode,
        protocol=args.protocol,
        straggler_model=args.straggler_model,
        straggler_delay=args.straggler_delay,
        points=args.points,
        max_iter=args.iterations,
        tol=args.tol,
        regularization=args.regularization,
        seed=args.seed,
        stage_timeout=args.stage_timeout,
        verify=args.verify,
        dtype=args.dtype,
        recovery_timeout=args.recovery_timeout,
        weighting=args.weighting,
    )


def client_from_args(
    args: argparse.Namespace, n_workers: int, dashboard: bool = False
) -> AbstractContextManager[Client]:
    """A Client on the cluster named by --scheduler/--scheduler-file, or a LocalCluster (with
    its dashboard on 127.0.0.1 if ``dashboard``)."""
    from dask_coded_als.engine.cluster import connect

    tls = {
        key: getattr(args, key)
        for key in ("tls_ca_file", "tls_cert", "tls_key")
        if getattr(args, key, None)
    }
    return connect(
        n_workers,
        scheduler=args.scheduler,
        scheduler_file=args.scheduler_file,
        timeout=args.connect_timeout,
        dashboard=dashboard,
        **tls,
    )


def fit_summary(model: Any, store_path: str | None = None) -> dict[str, Any]:
    times = [e["time"] for e in model.history_]
    return {
        "store": store_path,
        "mode": model.mode,
        "h": getattr(model, "h_", None),
        "partition": getattr(model, "partition_", None),
        "n_workers": model.n_workers,
        "n_factors": model.n_factors_,
        "weighting": model.weighting,
        "iterations": model.n_iter_,
        "converged": bool(model.converged_),
        "objective": model.history_[-1]["objective"],
        "median_iteration_seconds": float(np.median(times)),
        "timings": model.timings_,
        "wrong_answers": model.wrong_answers_,
    }


def print_rows(rows: list[dict], as_json: bool) -> None:
    import json

    from dask_coded_als._util import jsonable

    if as_json:
        print(json.dumps(jsonable(rows)))
        return
    for rank, row in enumerate(rows, 1):
        title = f"  {row['title']}" if row.get("title") else ""
        kind = "item" if "item_id" in row else "user"
        print(f"{rank:3d}. {kind} {row[f'{kind}_id']}  score {row['score']:.4f}{title}")


def print_metrics(result: dict[str, Any], k: int) -> None:
    """The metrics table of the model and popularity, then one line on which ranker won."""
    from dask_coded_als.recsys.evaluation import verdict

    names = [name for name in result["model"] if name not in ("n_users", "k")]
    print(f"{'':12s}" + "".join(f"{name.replace('@k', f'@{k}'):>14s}" for name in names))
    for label in ("model", "popularity"):
        values = result[label]
        print(f"{label:12s}" + "".join(f"{values[name]:14.4f}" for name in names))
    print(verdict(result["model"], result["popularity"], k))
