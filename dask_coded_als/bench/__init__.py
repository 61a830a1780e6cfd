"""The experiments: the paper's Table I and the method benchmark.

Only the ``table1`` and ``bench`` subcommands import this package; the library does not. Each
experiment is a runner that returns a plain result (:func:`run_table1`, :func:`run_bench`) and
a separate step that writes it out (:func:`write_report`: Markdown, JSON, plots). The plots need
matplotlib, from the optional extra: ``pip install 'dask-coded-als[bench]'``.
"""

from dask_coded_als.bench.common import (
    BENCH_FULL,
    BENCH_QUICK,
    METHODS,
    PAPER_TABLE1,
    TABLE1_FULL,
    TABLE1_QUICK,
    BenchConfig,
    Table1Config,
    relative_gap,
    synthetic_ratings,
    table1_cells,
    time_to_gap,
)
from dask_coded_als.bench.methods import run_bench
from dask_coded_als.bench.report import write_report
from dask_coded_als.bench.table1 import calibrate_stage1, run_table1

__all__ = [
    "BENCH_FULL",
    "BENCH_QUICK",
    "METHODS",
    "PAPER_TABLE1",
    "TABLE1_FULL",
    "TABLE1_QUICK",
    "BenchConfig",
    "Table1Config",
    "calibrate_stage1",
    "relative_gap",
    "run_bench",
    "run_table1",
    "synthetic_ratings",
    "table1_cells",
    "time_to_gap",
    "write_report",
]
