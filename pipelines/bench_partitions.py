"""The code family at W = 13, s = 2 (paper sizes, 2 fixed stragglers 1 s late): time per
iteration of (3, 3), (5, 2), (11, 1) and of ``partition="auto"``, on the machine's own link and
on a link throttled to a given bandwidth (to show the other side of the trade-off).

    python pipelines/bench_partitions.py [--quick] [--repeats 3] [--bandwidth 2e7] [--json F]

Every configuration runs once per repetition, in turn (interleaved), on one LocalCluster; the
figures are medians over the timed rounds (the first and the last round of a fit dropped) and
over the repetitions. The throttle makes every scatter and every gather of the client wait
bytes / bandwidth on one shared lock before it moves, as a single link of that bandwidth would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from distributed import Client

from dask_coded_als import CodedALS
from dask_coded_als.bench.common import synthetic_ratings
from dask_coded_als.data.gram import gram
from dask_coded_als.engine.cluster import local_cluster

PARTITIONS: list[Any] = [(3, 3), (5, 2), (11, 1), "auto"]


def _nbytes(value: Any) -> int:
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    return int(getattr(value, "nbytes", 0))


@contextlib.contextmanager
def throttled(client: Client, bandwidth: float | None) -> Iterator[None]:
    """Make the client's scatters and gathers share one link of ``bandwidth`` bytes/s."""
    if bandwidth is None:
        yield
        return
    lock = asyncio.Lock()
    scatter, gather = client._scatter, client._gather

    async def slow_scatter(data: Any, *args: Any, **kwargs: Any) -> Any:
        async with lock:
            await asyncio.sleep(_nbytes(data) / bandwidth)
        return await scatter(data, *args, **kwargs)

    async def slow_gather(futures: Any, *args: Any, **kwargs: Any) -> Any:
        result = await gather(futures, *args, **kwargs)
        async with lock:
            await asyncio.sleep(_nbytes(result) / bandwidth)
        return result

    client._scatter, client._gather = slow_scatter, slow_gather
    try:
        yield
    finally:
        client._scatter, client._gather = scatter, gather


def fit(client: Client, R: np.ndarray, D: np.ndarray, partition: Any, iterations: int) -> dict:
    late = dict(n_stragglers=2, straggler_model="fixed", straggler_delay=1.0)
    model = CodedALS(
        min(200, R.shape[1] // 7),
        n_workers=13,
        partition=partition,
        max_iter=iterations,
        tol=0,
        seed=0,
        **late,
    ).fit(R, client=client, gram=D)
    rounds = model.history_[1:-1]
    return {
        "iteration": float(np.median([e["time"] for e in rounds])),
        "partition": list(model.partition_),
        "points": model.points_,
        "rates": None if model.rates_ is None else model.rates_.__dict__,
        "bytes_sent": float(np.median([e["bytes_sent"] for e in rounds])),
        "bytes_received": float(np.median([e["bytes_received"] for e in rounds])),
        "cpu": float(np.median([e["cpu_seconds"] for e in rounds])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bandwidth", type=float, default=2e7, help="bytes/s of the slow link")
    parser.add_argument("--json")
    args = parser.parse_args()
    scale = 4 if args.quick else 1
    iterations = 4 if args.quick else 8
    repeats = 1 if args.quick else args.repeats
    R = synthetic_ratings(2400 // scale, 1500 // scale, 200 // scale, 5.0, seed=0)
    D, _ = gram(R)
    start = time.perf_counter()
    results: dict[str, Any] = {"quick": args.quick, "repeats": repeats}
    with local_cluster(13) as cluster, Client(cluster) as client:
        client.wait_for_workers(13)
        for partition in PARTITIONS[:-1]:  # warm-up
            fit(client, R, D, partition, 1)
        for link, bandwidth in (("local", None), ("throttled", args.bandwidth)):
            runs: dict[str, list[dict]] = {str(p): [] for p in PARTITIONS}
            with throttled(client, bandwidth):
                for _ in range(repeats):
                    for partition in PARTITIONS:
                        runs[str(partition)].append(fit(client, R, D, partition, iterations))
            results[link] = {
                name: {
                    "iteration": float(np.median([r["iteration"] for r in rs])),
                    "chosen": [r["partition"] for r in rs],
                    "points": rs[0]["points"],
                    "bytes_sent": rs[0]["bytes_sent"],
                    "bytes_received": rs[0]["bytes_received"],
                    "cpu": float(np.median([r["cpu"] for r in rs])),
                    "rates": rs[-1]["rates"],
                }
                for name, rs in runs.items()
            }
    results["bandwidth"] = args.bandwidth
    results["wall_time"] = time.perf_counter() - start
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
