"""Scale run: an ML-20M-shaped data set (138,493 users, 26,744 items, 20M ratings) through
ingest, D and 10 coded iterations at d = 64, with wall time and peak memory per phase.

    python pipelines/scale.py --workdir /tmp/scale [--users N --items N --ratings N] \\
        [--workers 12 --h 3 --factors 64 --iterations 10] [--json out.json]

Peak memory is the resident memory of this process and all its children (the LocalCluster's
scheduler, nannies and workers) together, sampled every 0.2 s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from distributed import Client

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "datasets"))

import generate  # noqa: E402

from dask_coded_als import CodedALS  # noqa: E402
from dask_coded_als.data import store as stores  # noqa: E402
from dask_coded_als.data.ingest import ingest  # noqa: E402
from dask_coded_als.engine import local_cluster  # noqa: E402


def tree_rss() -> int:
    """Resident bytes of this process and all its descendants."""
    me = psutil.Process()
    total = 0
    for proc in [me, *me.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass  # a process that ended meanwhile
    return total


class MemoryPeak:
    """Peak resident memory of the process tree since the last ``take``, sampled in a thread."""

    def __init__(self) -> None:
        self.peak = tree_rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss())
            time.sleep(0.2)

    def take(self) -> float:
        """GiB at the peak since the last call."""
        value = self.peak / 2**30
        self.peak = tree_rss()
        return value

    def stop(self) -> None:
        self._stop.set()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--users", type=int, default=138_493)
    parser.add_argument("--items", type=int, default=26_744)
    parser.add_argument("--ratings", type=int, default=20_000_000)
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--h", type=int, default=3)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--json")
    args = parser.parse_args()

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    memory = MemoryPeak()
    phases = {}

    def phase(name: str, start: float) -> None:
        phases[name] = {"seconds": time.perf_counter() - start, "peak_gib": memory.take()}
        print(
            f"{name}: {phases[name]['seconds']:.1f} s, peak +{phases[name]['peak_gib']:.2f} GiB",
            flush=True,
        )

    t = time.perf_counter()
    users, items, ratings, stamps = generate.generate_ratings(
        args.users, args.items, args.ratings, seed=0
    )
    files = generate.write_movielens(
        work, "ml-latest", users=users, items=items, ratings=ratings, timestamps=stamps
    )
    del users, items, ratings, stamps
    phase("generate (not part of the pipeline)", t)

    t0 = time.perf_counter()
    t = time.perf_counter()
    ingest(files["ratings"], work / "ml.zarr")
    phase("ingest", t)

    t = time.perf_counter()
    store = stores.open_store(work / "ml.zarr")
    D, transposed = stores.compute_gram(store)
    D_gib = D.nbytes / 2**30
    del D  # the fit reads it from the store while it places the shards
    D = stores.gram_array(store)[0]
    phase("D = R^T R (dask.array, by column blocks)", t)

    t = time.perf_counter()
    R = stores.ratings_matrix(store)
    model = CodedALS(
        args.factors, n_workers=args.workers, h=args.h, max_iter=args.iterations, tol=0, seed=0
    )
    with local_cluster(args.workers) as cluster, Client(cluster, timeout="60s") as client:
        client.wait_for_workers(args.workers, timeout=120)
        model.stage_timeout = 600.0
        model.fit(R, client=client, gram=D)
    phase(f"coded fit ({args.iterations} iterations, cluster start included)", t)
    total = time.perf_counter() - t0
    memory.stop()
    times = [e["time"] for e in model.history_]
    result = {
        "shape": {"users": args.users, "items": args.items, "ratings": args.ratings},
        "workers": args.workers,
        "h": args.h,
        "factors": args.factors,
        "phases": phases,
        "fit_timings": model.timings_,
        "median_iteration_seconds": float(np.median(times)),
        "pipeline_seconds": total,
        "peak_gib": max(p["peak_gib"] for p in phases.values()),
        "D_gib": D_gib,
        "transposed": transposed,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
