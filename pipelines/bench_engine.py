"""Engine benchmarks: coded vs uncoded per iteration, with and without stragglers, and the
master's share of an iteration. Ratios are measured in one run on one machine.

    python pipelines/bench_engine.py [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from distributed import Client

from dask_coded_als import CodedALS
from dask_coded_als.engine import local_cluster


def data(m: int, n: int, rank: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n)) + 0.1 * (
        rng.standard_normal((m, n))
    )


def run(client, R, gram, iterations, **kwargs) -> dict:
    model = CodedALS(max_iter=iterations, tol=0, seed=0, **kwargs).fit(R, client=client, gram=gram)
    rounds = model.history_[1:-1] or model.history_  # drop warm-up and the final objective round
    times = [e["time"] for e in rounds]
    master = [e["master_seconds"] / e["time"] for e in rounds]
    return {
        "median_iteration_seconds": float(np.median(times)),
        "median_master_share": float(np.median(master)),
        "bytes_sent_per_iteration": float(np.median([e["bytes_sent"] for e in rounds])),
        "bytes_received_per_iteration": float(np.median([e["bytes_received"] for e in rounds])),
    }


def _identity(x):
    return x


def round_trip_floor(client, n_workers: int, need: int, repeats: int = 10) -> float:
    """Median seconds to submit one trivial pinned task per worker and gather the first
    ``need``: the cost of a stage that computes nothing."""
    import itertools

    from distributed import as_completed

    workers = sorted(client.scheduler_info(n_workers=-1)["workers"])[:n_workers]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        futures = [
            client.submit(_identity, i, workers=[w], pure=False) for i, w in enumerate(workers)
        ]
        client.gather(list(itertools.islice(as_completed(futures), need)))
        times.append(time.perf_counter() - t0)
        client.cancel(futures)
    return float(np.median(times))


def gram_of(R: np.ndarray) -> np.ndarray:
    return R.T @ R if R.shape[0] >= R.shape[1] else R @ R.T


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    scale = 4 if args.quick else 1
    it = 3 if args.quick else 6
    results = {}

    # 1. The paper's sizes, 2 fixed stragglers 1 s late per task, W = 13, h = 3.
    R = data(2400 // scale, 1500 // scale, 250 // scale)
    D = gram_of(R)
    d = 200 // scale
    with local_cluster(13) as cluster, Client(cluster) as client:
        client.wait_for_workers(13)
        late = dict(n_stragglers=2, straggler_model="fixed", straggler_delay=1.0)
        r1 = {
            "coded, 2 stragglers": run(client, R, D, it, n_factors=d, n_workers=13, h=3, **late),
            "uncoded, 2 stragglers": run(
                client, R, D, it, n_factors=d, n_workers=13, mode="uncoded", **late
            ),
            "replication, 2 stragglers": run(
                client, R, D, it, n_factors=d, n_workers=13, mode="replication", **late
            ),
            "coded, no stragglers": run(client, R, D, it, n_factors=d, n_workers=13, h=3),
        }
    results["stragglers_W13_h3"] = r1

    # 2. No stragglers, l = 3000, d = 64, W = 12, h = 3.
    R = data(4000 // scale, 3000 // scale, 100 // scale, seed=1)
    D = gram_of(R)
    d = 64 // scale
    with local_cluster(12) as cluster, Client(cluster) as client:
        client.wait_for_workers(12)
        r2 = {
            "coded": run(client, R, D, it, n_factors=d, n_workers=12, h=3),
            "coded, real points": run(
                client, R, D, it, n_factors=d, n_workers=12, h=3, points="real"
            ),
            "uncoded": run(client, R, D, it, n_factors=d, n_workers=12, mode="uncoded"),
        }
        results["no_stragglers_l3000_W12_h3"] = r2
        results["empty_stage_seconds_W12_first11"] = round_trip_floor(client, 12, 11)

        # 3. The master's encode + decode share at l = 6000, d = 64, W = 12.
        R = data(6000 // scale, 6000 // scale, 100 // scale, seed=2)
        D = gram_of(R)
        results["master_share_l6000_W12_h3"] = {
            "coded": run(client, R, D, it, n_factors=d, n_workers=12, h=3)
        }
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"wall time {time.perf_counter() - t0:.0f} s")
