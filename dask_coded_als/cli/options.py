"""What the subcommands share: the parser, option types, the model and cluster options, and
turning the library's parameter names into the command line's flags."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
from distributed import Client

#: Exit codes: 0 success, 1 unexpected internal error, 2 bad input or usage, 3 cluster
#: failure, 4 numerical failure (rank-deficient data, non-finite factors), 130 interrupted.
EXIT_CODES = {"ok": 0, "internal": 1, "input": 2, "cluster": 3, "numerical": 4, "interrupt": 130}


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line with the input exit code."""

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
    "scheduler": "--scheduler",
    "scheduler_file": "--scheduler-file",
    "tls_ca_file": "--tls-ca-file",
    "tls_cert": "--tls-cert",
    "tls_key": "--tls-key",
    "weighting": "--weighting",
}


def as_flags(message: str) -> str:
    """A library message in the command line's words: ``overwrite=True`` becomes
    ``--overwrite``, ``n_factors=5`` becomes ``--factors 5``, ``tls_cert`` ``--tls-cert``.

    Examples
    --------
    >>> as_flags("n_stragglers=8 must be smaller than n_workers=8")
    '--stragglers 8 must be smaller than --workers 8'
    >>> as_flags("store exists; pass overwrite=True to replace it")
    'store exists; pass --overwrite to replace it'
    """
    message = re.sub(r"\boverwrite=True\b", "--overwrite", message)
    message = re.sub(r"\bpartition=\((\d+), (\d+)\)", r"--partition \1,\2", message)
    for name, flag in FLAGS.items():
        message = re.sub(rf"(?<![\w-]){name}=(?=\S)", f"{flag} ", message)
        message = re.sub(rf"(?<![\w-]){name}=", flag, message)
        if "_" in name:  # a bare name with an underscore is never plain prose
            message = re.sub(rf"(?<![\w-]){name}\b", flag, message)
    return message


# ---- the model and the cluster -------------------------------------------------------------------


def add_cluster_options(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--scheduler", metavar="ADDRESS", help="e.g. tcp://127.0.0.1:8786")
    group.add_argument("--scheduler-file", metavar="FILE")
    p.add_argument("--connect-timeout", type=non_negative_float, default=20.0)
    p.add_argument("--tls-ca-file", metavar="FILE", help="CA certificate of a TLS cluster")
    p.add_argument("--tls-cert", metavar="FILE", help="client certificate")
    p.add_argument("--tls-key", metavar="FILE", help="client private key")


def add_model_options(p: argparse.ArgumentParser, factors_required: bool = False) -> None:
    from dask_coded_als.engine import MODES, PROTOCOLS
    from dask_coded_als.engine.stragglers import STRAGGLER_MODELS
    from dask_coded_als.recsys.weighting import WEIGHTINGS

    p.add_argument(
        "--factors",
        type=positive_int,
        required=factors_required,
        metavar="D",
        help="latent dimension (default: about the square root of the smaller side, at most 150)",
    )
    p.add_argument(
        "--weighting",
        choices=WEIGHTINGS,
        default="none",
        help="weigh R before the fit: none (ratings as given), binary (implicit feedback: every "
        "rating is 1), bm25 (implicit counts: popular items and heavy users weigh less)",
    )
    p.add_argument("--workers", type=positive_int, default=8, metavar="W")
    p.add_argument("--stragglers", type=non_negative_int, default=0, metavar="S")
    p.add_argument("--h", type=positive_int, default=None, metavar="H")
    p.add_argument(
        "--partition",
        type=partition,
        default=None,
        metavar="P,R",
        help="the code: D's rows split P ways, its contraction R ways (or auto)",
    )
    p.add_argument("--mode", choices=MODES, default="coded")
    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="fast",
        help="fast: one exchange per iteration; paper: the paper's three (same iterates)",
    )
    p.add_argument("--straggler-model", choices=STRAGGLER_MODELS, default="none")
    p.add_argument("--straggler-delay", type=non_negative_float, default=0.0, metavar="SECONDS")
    p.add_argument(
        "--points",
        choices=("circle", "real"),
        default=None,
        help="evaluation points (default: real where they decode accurately for this W and "
        "threshold, else the circle)",
    )
    p.add_argument("--iterations", type=non_negative_int, default=50, metavar="T")
    p.add_argument("--tol", type=non_negative_float, default=1e-9)
    p.add_argument("--regularization", type=non_negative_float, default=0.0, metavar="L")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--stage-timeout", type=non_negative_float, default=120.0, metavar="SECONDS")
    add_cluster_options(p)
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")


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
        weighting=args.weighting,
    )


def client_from_args(args: argparse.Namespace, n_workers: int) -> AbstractContextManager[Client]:
    """A Client on the cluster named by --scheduler/--scheduler-file, or a LocalCluster."""
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
    }


def progress(out=sys.stderr) -> Callable[[dict], None]:
    """A fit callback printing one line per round."""

    def report(entry: dict) -> None:
        stage = entry["stages"]["E"]
        late = stage["late"] + stage["failed"]
        print(
            f"iteration {entry['iteration']:3d}  {entry['time']:6.2f} s  "
            f"first-K {stage['seconds']:6.2f} s  late {late}  objective {entry['objective']:.6e}",
            file=out,
            flush=True,
        )

    return report


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
