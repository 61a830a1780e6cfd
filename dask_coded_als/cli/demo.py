"""``dask-coded-als demo``: the whole flow on the bundled sample, in under a minute: ingest, fit
with stragglers (coded beside uncoded), recommend, evaluate against popularity."""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import numpy as np

from dask_coded_als.cli.options import non_negative_float, positive_int, print_metrics


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole flow on the bundled sample, in under a minute")
    p.add_argument(
        "--data",
        help="a folder with ratings.csv (and movies.csv) (default: the bundled sample)",
    )
    p.add_argument("--out", help="where to write the store (default: a new temporary folder)")
    p.add_argument(
        "--factors", type=positive_int, default=10, metavar="D", help="d, the latent dimension"
    )
    p.add_argument(
        "--iterations", type=positive_int, default=15, metavar="T", help="updates of the factor"
    )
    p.add_argument(
        "--straggler-delay",
        type=non_negative_float,
        default=0.5,
        metavar="SECONDS",
        help="how late the 2 stragglers of 8 workers are in every task",
    )
    p.set_defaults(func=run)


@contextlib.contextmanager
def _inputs(folder: str | None):
    """(ratings, movies or None): the folder's files, or the bundled sample's."""
    from dask_coded_als.data import sample_files

    if folder is None:
        with sample_files() as paths:
            yield paths
        return
    movies = Path(folder) / "movies.csv"
    yield Path(folder) / "ratings.csv", movies if movies.exists() else None


def run(args: argparse.Namespace) -> int:
    from dask_coded_als.engine import CodedALS
    from dask_coded_als.engine.cluster import cluster_for
    from dask_coded_als.recsys.evaluation import describe_split
    from dask_coded_als.recsys.flow import run_flow

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="dask-coded-als-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    store_path = out / "sample.zarr"
    W, s, delay = 8, 2, args.straggler_delay
    common = dict(
        n_factors=args.factors,
        n_workers=W,
        n_stragglers=s,
        straggler_model="fixed",
        straggler_delay=delay,
        max_iter=args.iterations,
        tol=0,
        seed=0,
    )
    t0 = time.perf_counter()
    print(f"starting a LocalCluster of {W} worker processes on 127.0.0.1")
    with _inputs(args.data) as (ratings, movies), cluster_for(None, W) as (client, _):
        flow = run_flow(ratings, store_path, CodedALS(**common), client, movies=movies)
        coded = flow.model
        uncoded = CodedALS(mode="uncoded", **common).fit(flow.train, client=client)
    report = flow.ingest
    print(
        f"1. ingested {report.n_ratings} ratings ({report.n_users} users x {report.n_items} "
        f"items) into {store_path}"
    )
    print(f"2. held out a {describe_split(flow.split)}")
    t_coded = float(np.median([e["time"] for e in coded.history_]))
    t_uncoded = float(np.median([e["time"] for e in uncoded.history_]))
    P = coded.user_factors_ @ coded.item_factors_.T
    Q = uncoded.user_factors_ @ uncoded.item_factors_.T
    print(
        f"3. fit d={args.factors} on the training part with {s} of {W} workers {delay:g} s late "
        f"in every task:\n"
        f"   coded (h={coded.h_}, first {coded.h_**2 + coded.h_ - 1} of {W}): median iteration "
        f"{t_coded:.3f} s\n"
        f"   uncoded (waits for all {W}):           median iteration {t_uncoded:.3f} s "
        f"({t_uncoded / t_coded:.1f}x slower)\n"
        f"   same factors: relative difference of U V^T = "
        f"{np.linalg.norm(P - Q) / np.linalg.norm(Q):.1e}"
    )
    user = flow.store.user_ids[0]
    print(
        f"4. top 5 for user {user} (items rated in training excluded; scores are affinities "
        f"for ranking, not predicted ratings):"
    )
    for rank, row in enumerate(flow.recommendations, 1):
        title = f"  {row['title']}" if row.get("title") else ""
        print(f"   {rank}. item {row['item_id']}{title}  ({row['score']:.3f})")
    print("5. held-out evaluation at k=10:")
    print_metrics(flow.metrics, 10)
    print(
        f"done in {time.perf_counter() - t0:.1f} s; store with ratings, factors and "
        f"history: {store_path} (`dask-coded-als evaluate {store_path}` scores them again)"
    )
    return 0
