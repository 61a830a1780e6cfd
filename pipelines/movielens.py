"""The whole flow on a real MovieLens download, on the public API.

    python pipelines/movielens.py ml-1m/ratings.dat --movies ml-1m/movies.dat --factors 32 \\
        --workers 8 --stragglers 2 --out ml-1m.zarr [--scheduler tcp://HOST:PORT]

Ingests the ratings into a Zarr store, computes D with dask.array, holds out 20% of each user's
ratings, fits the coded ALS on the rest (with ``--straggler-delay`` seconds of injected delay on
``--stragglers`` workers if given), writes the factors, prints a few recommendations and the
ranking metrics against the most-popular baseline.
"""

from __future__ import annotations

import argparse
import time

from dask_coded_als import CodedALS
from dask_coded_als import store as stores
from dask_coded_als.cluster import connect
from dask_coded_als.evaluation import evaluate_factors, evaluate_popularity, train_test_split
from dask_coded_als.ingest import ingest
from dask_coded_als.recommend import recommend_by_id


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
    report = ingest(args.ratings, args.out, movies=args.movies, overwrite=True)
    print(f"ingest: {report.n_ratings} ratings, {report.n_users} users, {report.n_items} items")
    store = stores.open_store(args.out)
    R = stores.ratings_matrix(store)
    train, test = train_test_split(R, test_fraction=0.2, seed=args.seed)
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
        model.fit(train, client=client)
    history = model.history_
    print(
        f"fit: h={model.h_}, {model.n_iter_} iterations, median "
        f"{sorted(e['time'] for e in history)[len(history) // 2]:.3f} s per iteration"
    )
    stores.write_factors(store, model.user_factors_, model.item_factors_, {"n_iter": model.n_iter_})
    user = store.user_ids[0]
    for row in recommend_by_id(
        store.user_ids,
        store.item_ids,
        model.user_factors_,
        model.item_factors_,
        train,
        user,
        n=5,
        titles=store.titles,
    ):
        print(f"  user {user}: {row['item_id']} {row['title'] or ''} ({row['score']:.3f})")
    ours = evaluate_factors(model.user_factors_, model.item_factors_, train, test, k=10)
    popular = evaluate_popularity(train, test, k=10)
    for name in ("precision@k", "recall@k", "ndcg@k", "map@k"):
        print(f"{name:12s} model {ours[name]:.4f}  popularity {popular[name]:.4f}")
    print(f"done in {time.perf_counter() - t0:.1f} s; store: {args.out}")


if __name__ == "__main__":
    main()
