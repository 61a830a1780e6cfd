"""Coded vs uncoded vs replication vs dask.array svd_compressed under four straggler
models: time per iteration, time to a 1e-6 objective gap, bytes. Same as
``dask-coded-als bench``.

    python pipelines/bench.py [--quick] [--json] [--out DIR] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from dask_coded_als.experiments import run_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--out", default="docs/results", help="where tables and plots go")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    result = run_bench(quick=args.quick, out_dir=Path(args.out), seed=args.seed)
    if args.json:
        print(json.dumps(result))
    else:
        for path in result["files"]:
            print(f"wrote {path}")
        print(f"wall time {result['wall_time']:.1f} s")


if __name__ == "__main__":
    main()
