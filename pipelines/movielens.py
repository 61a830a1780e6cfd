"""The whole flow on a real MovieLens download, on the public API.

    python pipelines/movielens.py ml-1m/ratings.dat --movies ml-1m/movies.dat --factors 32 \\
        --workers 8 --stragglers 2 --out ml-1m.zarr [--scheduler tcp://HOST:PORT]

Ingests the ratings into a Zarr store, holds out 20% of each user's ratings, fits the coded ALS
on the rest (with ``--straggler-delay`` seconds of injected delay on ``--stragglers`` workers if
given), writes the factors with the split, prints a few recommendations and the ranking metrics
against the most-popular baseline (:func:`dask_coded_als.recsys.flow.run_flow`, which the
``demo`` subcommand runs on the bundled sample).
"""

from __future__ import annotations

import argparse
import time

from dask_coded_als import CodedALS
from dask_coded_als.engine.cluster import connect
from dask_coded_als.recsys.flow import run_flow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ratings", help="u.data, ratings.dat or ratings.csv (optionally .gz)")
    parser.add_argument("--movies", help="u.item, movies.dat or movies.csv")
    parser.add_argument("--out", required=True, help="the Zarr store to write")
    parser.add_argument("--factors", type=int, default=32)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--stragglers", type=int, default=2)
    parser.add_argument("--straggler-delay", type=float, default=0.0)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--scheduler", help="an existing scheduler; default: a LocalCluster")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    t0 = time.perf_counter()
    model = CodedALS(
        args.factors,
        n_workers=args.workers,
        n_stragglers=args.stragglers,
        straggler_model="fixed" if args.straggler_delay > 0 else "none",
        straggler_delay=args.straggler_delay,
        max_iter=args.iterations,
        seed=args.seed,
    )
    with connect(args.workers, scheduler=args.scheduler) as client:
        flow = run_flow(args.ratings, args.out, model, client, movies=args.movies, seed=args.seed)
    report = flow.ingest
    print(f"ingest: {report.n_ratings} ratings, {report.n_users} users, {report.n_items} items")
    times = sorted(e["time"] for e in model.history_)
    print(
        f"fit: partition {model.partition_}, {model.n_iter_} iterations, median "
        f"{times[len(times) // 2]:.3f} s per iteration"
    )
    user = flow.store.user_ids[0]
    for row in flow.recommendations:
        print(f"  user {user}: {row['item_id']} {row['title'] or ''} ({row['score']:.3f})")
    ours, popular = flow.metrics["model"], flow.metrics["popularity"]
    for name in ("precision@k", "recall@k", "ndcg@k", "map@k"):
        print(f"{name:12s} model {ours[name]:.4f}  popularity {popular[name]:.4f}")
    print(f"done in {time.perf_counter() - t0:.1f} s; store: {args.out}")


if __name__ == "__main__":
    main()
