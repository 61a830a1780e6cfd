"""``dask-coded-als recommend`` and ``similar``: top items for a user, items like an item."""

from __future__ import annotations

import argparse

from dask_coded_als.cli.options import positive_int, print_rows


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recommend", help="top items for a user")
    p.add_argument("store")
    p.add_argument("--user", required=True)
    p.add_argument("-n", type=positive_int, default=10)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_recommend)

    p = sub.add_parser("similar", help="items most similar to an item")
    p.add_argument("store")
    p.add_argument("--item", required=True)
    p.add_argument("-n", type=positive_int, default=10)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_similar)


def run_recommend(args: argparse.Namespace) -> int:
    from dask_coded_als.data import store as stores
    from dask_coded_als.recsys.recommend import recommend_by_id

    store = stores.open_store(args.store)
    U, V, _ = stores.read_factors(store)
    rows = recommend_by_id(
        store.user_ids,
        store.item_ids,
        U,
        V,
        stores.ratings_matrix(store),
        args.user,
        n=args.n,
        titles=store.titles,
    )
    print_rows(rows, args.json)
    return 0


def run_similar(args: argparse.Namespace) -> int:
    from dask_coded_als.data import store as stores
    from dask_coded_als.recsys.recommend import similar_by_id

    store = stores.open_store(args.store)
    _, V, _ = stores.read_factors(store)
    rows = similar_by_id(store.item_ids, V, args.item, n=args.n, titles=store.titles)
    print_rows(rows, args.json)
    return 0
