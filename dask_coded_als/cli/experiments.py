"""``dask-coded-als table1`` and ``bench``: the experiments, written into a folder of results.

They need the optional ``[bench]`` extra (matplotlib for the plots). Results go into the folder
given with ``--out``, by default a new folder named after the experiment and the time; a quick
run never writes over the results of a full one.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dask_coded_als._util import jsonable
from dask_coded_als.cli.options import non_negative_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    for name, what in (
        ("table1", "the paper's Table I: time per iteration for every (k, h) cell"),
        ("bench", "coded vs uncoded vs replication vs svd_compressed, with plots"),
    ):
        p = sub.add_parser(name, help=what)
        p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
        p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
        p.add_argument(
            "--out",
            help=f"where tables and plots go (default: a new folder {name}-DATE-TIME)",
        )
        p.add_argument(
            "--seed",
            type=non_negative_int,
            default=0,
            help="seeds the data, the factors and the stragglers",
        )
        p.set_defaults(func=run, experiment=name)


def run(args: argparse.Namespace) -> int:
    from dask_coded_als.bench import plots, run_bench, run_table1, write_report
    from dask_coded_als.bench.report import check_out_dir

    plots.pyplot()  # a missing matplotlib is one line now, not after the experiment
    runner = run_table1 if args.experiment == "table1" else run_bench
    out = Path(args.out or time.strftime(f"{args.experiment}-%Y%m%d-%H%M%S"))
    check_out_dir(args.experiment, args.quick, out)
    result = runner(quick=args.quick, seed=args.seed)
    files = write_report(result, out)
    if args.json:
        print(json.dumps(jsonable({**result, "files": [str(f) for f in files]})))
        return 0
    for path in files:
        print(f"wrote {path}")
    print(f"wall time {result['wall_time']:.1f} s")
    return 0
