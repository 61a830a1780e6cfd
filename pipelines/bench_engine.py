"""Engine benchmarks beside `dask-coded-als bench`: no-straggler speed at l = 3000, the
arithmetic of the point families, the master's share, and where a round's time goes.

Every figure is a median over the timed rounds of fits that run interleaved (each
configuration once, then again) on one cluster, so ratios compare like with like on a shared,
noisy machine.

    python pipelines/bench_engine.py [--quick] [--repeats 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
from distributed import Client

from dask_coded_als import CodedALS
from dask_coded_als.data.gram import gram
from dask_coded_als.engine.cluster import local_cluster


def data(m: int, n: int, rank: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n)) + 0.1 * (
        rng.standard_normal((m, n))
    )


def fit(client: Client, R: np.ndarray, D: np.ndarray, iterations: int, **options: Any) -> dict:
    """One fit; medians over its rounds without the first and the last."""
    model = CodedALS(max_iter=iterations, tol=0, seed=0, **options).fit(R, client=client, gram=D)
    rounds = model.history_[1:-1] or model.history_

    def median(value) -> float:
        return float(np.median([value(e) for e in rounds]))

    return {
        "points": model.points_,
        "iteration": median(lambda e: e["time"]),
        "master": median(lambda e: e["master_seconds"]),
        "exchanges": median(lambda e: sum(s["seconds"] for s in e["stages"].values())),
        "send": median(lambda e: e["stages"]["E"]["send"]),
        "queue": median(lambda e: e["stages"]["E"]["queue"]),
        "task_compute": median(lambda e: e["stages"]["E"]["compute"]),
        "returned": median(lambda e: e["stages"]["E"]["returned"]),
        "cpu": median(lambda e: e["cpu_seconds"]),
        "late_cpu": median(lambda e: sum(s["late_cpu_seconds"] for s in e["stages"].values())),
        "bytes_sent": median(lambda e: e["bytes_sent"]),
        "bytes_received": median(lambda e: e["bytes_received"]),
    }


def interleaved(
    client: Client, R: np.ndarray, configs: dict[str, dict], iterations: int, repeats: int
) -> dict[str, dict]:
    """Every configuration once per repetition, in turn; the median of each figure."""
    D, _ = gram(R)
    for options in configs.values():  # warm-up: the first fit on fresh workers pays imports
        CodedALS(max_iter=1, tol=0, seed=0, **options).fit(R, client=client, gram=D)
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    for _ in range(repeats):
        for name, options in configs.items():
            runs[name].append(fit(client, R, D, iterations, **options))
    return {
        name: {
            key: results[0][key] if key == "points" else float(np.median([r[key] for r in results]))
            for key in results[0]
        }
        for name, results in runs.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    scale = 4 if args.quick else 1
    iterations = 4 if args.quick else 8
    repeats = 1 if args.quick else args.repeats
    results: dict[str, Any] = {"quick": args.quick, "repeats": repeats}
    start = time.perf_counter()

    with local_cluster(13) as cluster, Client(cluster) as client:
        client.wait_for_workers(13)
        # 1. Paper sizes, W = 13, h = 3: where a round's time goes, and the arithmetic of the
        #    point families (the real code does 1x the multiply-adds, the circle 1.5x).
        R = data(2400 // scale, 1500 // scale, 200 // scale)
        d = 200 // scale
        late = dict(n_stragglers=2, straggler_model="fixed", straggler_delay=1.0)
        common = dict(n_factors=d, n_workers=13, h=3)
        results["paper_sizes_W13_h3"] = interleaved(
            client,
            R,
            {
                "coded, fixed stragglers": {**common, **late},
                "coded circle points, fixed stragglers": {**common, **late, "points": "circle"},
                "coded real points, fixed stragglers": {**common, **late, "points": "real"},
                "coded paper protocol, fixed stragglers": {**common, **late, "protocol": "paper"},
                "coded, no stragglers": common,
                "coded circle points, no stragglers": {**common, "points": "circle"},
                "uncoded, fixed stragglers": {"n_factors": d, "n_workers": 13, "mode": "uncoded"}
                | late,
            },
            iterations,
            repeats,
        )

        # The cost of checking answers: h = 2 (K = 5), so that K + 2e + s <= W for e <= 2.
        verify = {**late, "n_factors": d, "n_workers": 13, "h": 2}
        results["verify_W13_h2"] = interleaved(
            client,
            R,
            {f"verify={e}": {**verify, "verify": e} for e in (0, 1, 2)},
            iterations,
            repeats,
        )

    with local_cluster(12) as cluster, Client(cluster) as client:
        client.wait_for_workers(12)
        # 2. No stragglers, l = 3000, d = 64, W = 12, h = 3.
        R = data(4000 // scale, 3000 // scale, 100 // scale, seed=1)
        d = 64 // scale
        common = dict(n_factors=d, n_workers=12)
        results["no_stragglers_l3000_W12_h3"] = interleaved(
            client,
            R,
            {
                "coded": {**common, "h": 3},
                "coded circle points": {**common, "h": 3, "points": "circle"},
                "coded paper protocol": {**common, "h": 3, "protocol": "paper"},
                "uncoded": {**common, "mode": "uncoded"},
            },
            iterations,
            repeats,
        )
        # 3. A compute-bound size: l = 6000, d = 64 (the workers' products dominate).
        R = data(6000 // scale, 6000 // scale, 100 // scale, seed=2)
        results["compute_bound_l6000_W12_h3"] = interleaved(
            client,
            R,
            {
                "coded": {**common, "h": 3},
                "coded circle points": {**common, "h": 3, "points": "circle"},
                "coded (11, 1)": {**common, "partition": (11, 1)},
                "uncoded": {**common, "mode": "uncoded"},
            },
            iterations,
            repeats,
        )
    results["wall_time"] = time.perf_counter() - start
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
