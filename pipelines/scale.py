"""Scale run: an ML-20M-shaped data set (138,493 users, 26,744 items, 20M ratings) through
ingest, D on the cluster, the shards built by the workers and 10 coded iterations at d = 64,
with wall time and peak memory per phase; then, from the workers' measured rates, what larger
data sets need per worker.

    python pipelines/scale.py --workdir /tmp/scale [--dtype float64|float32] [--json out.json]
        [--users N --items N --ratings N] [--workers 12 --h 3 --factors 64 --iterations 10]
    python pipelines/scale.py --project-only [--json out.json]

Peak memory is the resident memory of this process and all its children (the LocalCluster's
scheduler, nannies and workers) together, sampled every 0.2 s, and separately that of this
process alone (the one that runs ``fit``). The generated file is kept in ``--workdir`` between
runs (generating it is not part of the pipeline); the store is made anew each run.
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
from dask_coded_als.coding import theory  # noqa: E402
from dask_coded_als.coding.codes import ALSCode  # noqa: E402
from dask_coded_als.coding.points import choose_points  # noqa: E402
from dask_coded_als.data import store as stores  # noqa: E402
from dask_coded_als.data.ingest import ingest  # noqa: E402
from dask_coded_als.engine import local_cluster  # noqa: E402
from dask_coded_als.engine.calibration import measure_rates  # noqa: E402

GIB = 2**30
DTYPES = ("float64", "float32")

#: Data sets projected from the measured rates: (name, users, items, ratings).
PROJECTED = (
    ("ML-20M", 138_493, 26_744, 20_000_263),
    ("ML-25M", 162_541, 62_423, 25_000_095),
    ("Netflix prize", 480_189, 17_770, 100_480_507),
)
#: The clusters projected: (workers, stragglers tolerated); one core per worker.
PROJECTED_CLUSTERS = ((12, 1), (24, 2), (48, 4))
#: Link assumed between the master and the workers in the projection (10 Gbit/s).
PROJECTED_BANDWIDTH = 1.25e9


def rss(process: psutil.Process) -> int:
    try:
        return process.memory_info().rss
    except psutil.Error:
        return 0  # a process that ended meanwhile


class MemoryPeak:
    """Peak resident memory of the process tree and of this process since the last ``take``,
    sampled in a thread."""

    def __init__(self) -> None:
        self.me = psutil.Process()
        self.tree = self.own = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._sample()
        self._thread.start()

    def _sample(self) -> None:
        own = rss(self.me)
        tree = own + sum(rss(p) for p in self.me.children(recursive=True))
        self.tree, self.own = max(self.tree, tree), max(self.own, own)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(0.2)

    def take(self) -> tuple[float, float]:
        """(all processes, this process) GiB at the peak since the last call."""
        values = self.tree / GIB, self.own / GIB
        self.tree = self.own = 0
        self._sample()
        return values

    def stop(self) -> None:
        self._stop.set()


def projection(rates: theory.ClusterRates, n_factors: int, dtype: str) -> list[dict]:
    """Per-worker memory and seconds per iteration for the PROJECTED data sets and clusters,
    with h from ``theory.choose_h`` on the measured per-worker rates."""
    value_bytes = np.dtype(dtype).itemsize
    rows = []
    for name, users, items, ratings in PROJECTED:
        size = min(users, items)
        for n_workers, n_stragglers in PROJECTED_CLUSTERS:
            h = theory.choose_h(
                n_workers, n_stragglers, size, n_factors, rates.op_mean, rates.op_std
            )
            circle = choose_points(n_workers, theory.recovery_threshold(h), h, dtype) == "circle"
            link = theory.ClusterRates(
                rates.op_mean, rates.op_std, PROJECTED_BANDWIDTH, rates.latency
            )
            exchange = theory.expected_exchange_time(
                (h, h), n_workers, n_stragglers, size, n_factors, link, circle, value_bytes
            )
            code = ALSCode(h, n_workers, "circle" if circle else "real")
            padded, blocks = code.padded_size(size), code.product_code
            planes = 2 if code.complex else 1
            shard = (
                (padded // blocks.contraction_blocks) * (padded // blocks.output_blocks) * planes
            ) * value_bytes
            rows.append(
                {
                    "data": name,
                    "users": users,
                    "items": items,
                    "ratings": ratings,
                    "workers": n_workers,
                    "stragglers": n_stragglers,
                    "h": h,
                    "points": "circle" if circle else "real",
                    "shard_gib": shard / GIB,
                    "D_gib": size * size * value_bytes / GIB,
                    "seconds_per_iteration": exchange.total,
                    "compute_seconds": exchange.compute,
                }
            )
    return rows


def print_projection(rows: list[dict], dtype: str) -> None:
    print(f"\nprojection ({dtype}, one core per worker, 10 Gbit/s link):")
    for r in rows:
        print(
            f"  {r['data']:14s} W={r['workers']:3d} s={r['stragglers']} h={r['h']} "
            f"({r['points']}): shard {r['shard_gib']:.2f} GiB per worker, "
            f"{r['seconds_per_iteration']:.2f} s per iteration"
        )


def run(args: argparse.Namespace) -> dict:
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    shape = f"{args.users}x{args.items}x{args.ratings}"
    source = work / f"ratings-{shape}"
    if not (source / "ratings.csv").exists():
        t = time.perf_counter()
        users, items, ratings, stamps = generate.generate_ratings(
            args.users, args.items, args.ratings, seed=0
        )
        generate.write_movielens(
            source, users=users, items=items, ratings=ratings, timestamps=stamps
        )
        del users, items, ratings, stamps
        print(f"generate (not part of the pipeline): {time.perf_counter() - t:.1f} s", flush=True)
    store_path = work / "ml.zarr"
    shutil.rmtree(store_path, ignore_errors=True)

    memory = MemoryPeak()
    phases: dict[str, dict] = {}

    def phase(name: str, seconds: float) -> None:
        tree, own = memory.take()
        phases[name] = {"seconds": seconds, "peak_gib": tree, "fit_process_peak_gib": own}
        print(
            f"{name}: {seconds:.1f} s, peak {tree:.2f} GiB (this process {own:.2f} GiB)",
            flush=True,
        )

    t0 = t = time.perf_counter()
    ingest(source / "ratings.csv", store_path)
    phase("ingest", time.perf_counter() - t)

    t = time.perf_counter()
    with (
        local_cluster(args.workers) as cluster,
        Client(cluster, timeout="60s", set_as_default=False) as client,
    ):
        client.wait_for_workers(args.workers, timeout=120)
        phase("cluster start", time.perf_counter() - t)

        t = time.perf_counter()
        store = stores.open_store(store_path)
        _, transposed = stores.compute_gram(store, client=client, dtype=args.dtype)
        phase("D = R^T R on the workers, into the store", time.perf_counter() - t)

        t = time.perf_counter()
        R = stores.ratings_matrix(store)
        model = CodedALS(
            args.factors,
            n_workers=args.workers,
            h=args.h,
            max_iter=args.iterations,
            tol=0,
            seed=0,
            dtype=args.dtype,
            stage_timeout=600.0,
        )
        model.fit(R, client=client, gram=stores.gram_source(store))
        fit_seconds = time.perf_counter() - t
        # end to end: ingest, cluster, D, placement, iterations (not the rates measured below
        # for the projection, nor the cluster's shutdown)
        total = time.perf_counter() - t0
        timings = model.timings_
        tree, own = memory.take()
        for name, key in (("placement (workers build their shards)", "scatter_data"),):
            phases[name] = {"seconds": timings[key]}
        phases[f"fit ({args.iterations} iterations, placement included)"] = {
            "seconds": fit_seconds,
            "peak_gib": tree,
            "fit_process_peak_gib": own,
        }
        print(
            f"fit: {fit_seconds:.1f} s (placement {timings['scatter_data']:.1f} s, iterations "
            f"{timings['iterations']:.1f} s), peak {tree:.2f} GiB (this process {own:.2f} GiB); "
            f"end to end {total:.1f} s",
            flush=True,
        )
        addresses = [model.workers_[w] for w in sorted(model.workers_)]
        rates = {dtype: measure_rates(client, addresses, dtype=dtype) for dtype in DTYPES}
    memory.stop()
    shutil.rmtree(store_path, ignore_errors=True)
    times = [e["time"] for e in model.history_[1:]]
    return {
        "shape": {"users": args.users, "items": args.items, "ratings": args.ratings},
        "dtype": args.dtype,
        "workers": args.workers,
        "h": args.h,
        "points": model.points_,
        "factors": args.factors,
        "iterations": args.iterations,
        "phases": phases,
        "fit_timings": timings,
        "median_iteration_seconds": float(np.median(times)),
        "pipeline_seconds": total,
        "peak_gib": max(p.get("peak_gib", 0.0) for p in phases.values()),
        "fit_process_peak_gib": max(p.get("fit_process_peak_gib", 0.0) for p in phases.values()),
        "transposed": transposed,
        "rates": {dtype: r.__dict__ for dtype, r in rates.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/scale")
    parser.add_argument("--users", type=int, default=138_493)
    parser.add_argument("--items", type=int, default=26_744)
    parser.add_argument("--ratings", type=int, default=20_000_000)
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--h", type=int, default=3)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--dtype", choices=DTYPES, default="float64")
    parser.add_argument("--project-only", action="store_true", help="measure rates, project")
    parser.add_argument("--json")
    args = parser.parse_args()

    if args.project_only:
        with (
            local_cluster(2) as cluster,
            Client(cluster, timeout="60s", set_as_default=False) as client,
        ):
            client.wait_for_workers(2, timeout=60)
            addresses = sorted(client.scheduler_info()["workers"])
            rates = {dtype: measure_rates(client, addresses, dtype=dtype) for dtype in DTYPES}
        result: dict = {"rates": {dtype: r.__dict__ for dtype, r in rates.items()}}
    else:
        result = run(args)
    # each precision projected with the rates measured in it (float32 products run faster)
    result["projection"] = {
        dtype: projection(theory.ClusterRates(**result["rates"][dtype]), args.factors, dtype)
        for dtype in DTYPES
    }
    for dtype, rows in result["projection"].items():
        print_projection(rows, dtype)
    print(json.dumps({k: v for k, v in result.items() if k != "projection"}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
