"""``dask-coded-als recommend`` and ``similar``: top items for a user, for a new user's ratings
(fold-in) or for every user (a batch job on the cluster); items like an item, users like a user.
All of them use the model stored by ``fit`` (:meth:`dask_coded_als.CodedALS.load`)."""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path
from typing import Any

from dask_coded_als.cli.options import add_cluster_options, positive_int, print_rows


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "recommend", help="top items for a user, a new user's ratings, or every user"
    )
    p.add_argument("store")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="a user of the store")
    who.add_argument(
        "--ratings",
        metavar="FILE",
        help="a new user's ratings: CSV lines item,rating (a header line is optional)",
    )
    who.add_argument(
        "--all",
        action="store_true",
        help="every user, block by block on the cluster, into --out or the store",
    )
    p.add_argument("-n", "--n", type=positive_int, default=10, dest="n")
    p.add_argument(
        "--include-seen", action="store_true", help="do not leave out the items already rated"
    )
    p.add_argument(
        "--out",
        metavar="PATH",
        help="with --all: a .parquet or .csv file (one row per user and rank); default: the "
        "store's recommendations group",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=os.cpu_count() or 1,
        metavar="W",
        help="with --all: worker processes of the local cluster (default: one per core)",
    )
    add_cluster_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_recommend)

    p = sub.add_parser("similar", help="items most similar to an item, or users to a user")
    p.add_argument("store")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--item", help="the items most similar to this item (its id)")
    which.add_argument("--user", help="the users most similar to this user (their id)")
    p.add_argument("-n", "--n", type=positive_int, default=10, dest="n")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_similar)


def read_ratings_file(path: str | os.PathLike) -> dict[str, float]:
    """A new user's ratings from a CSV file of ``item,rating`` lines (more columns are ignored;
    a first line whose rating is not a number is a header). Ids stay text: the model compares
    them in the dtype of its item ids."""
    from dask_coded_als.errors import InputError

    ratings: dict[str, float] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for number, row in enumerate(csv.reader(f), 1):
                if not row or not "".join(row).strip():
                    continue
                if len(row) < 2:
                    raise InputError(f"{path}:{number}: expected item,rating")
                item, text = row[0].strip(), row[1].strip()
                try:
                    rating = float(text)
                except ValueError:
                    if number == 1:  # a header
                        continue
                    raise InputError(f"{path}:{number}: rating {text!r} is not a number") from None
                if item in ratings:
                    raise InputError(f"{path}:{number}: item {item} rated twice")
                ratings[item] = rating
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    if not ratings:
        raise InputError(f"{path}: no ratings")
    return ratings


def run_recommend(args: argparse.Namespace) -> int:
    from dask_coded_als.engine import CodedALS
    from dask_coded_als.errors import InputError
    from dask_coded_als.recsys.batch import OUTPUT_SUFFIXES

    if args.out is not None and not args.all:
        raise InputError("--out goes with --all")
    if args.out is not None and Path(args.out).suffix.lower() not in OUTPUT_SUFFIXES:
        raise InputError(f"{args.out}: --out must end in .parquet or .csv")
    model = CodedALS.load(args.store)
    exclude = not args.include_seen
    if args.all:
        return _run_all(model, args, exclude)
    if args.ratings is not None:
        rows = model.recommend_for_ratings(
            read_ratings_file(args.ratings), n=args.n, exclude_seen=exclude
        )
    else:
        rows = model.recommend(args.user, n=args.n, exclude_seen=exclude)
    print_rows(rows, args.json)
    return 0


def _run_all(model: Any, args: argparse.Namespace, exclude: bool) -> int:
    from dask_coded_als.cli.options import client_from_args
    from dask_coded_als.data import store as stores
    from dask_coded_als.recsys.batch import recommend_all, recommendations_table, write_table

    start = time.perf_counter()
    seen = model.ratings_ if exclude else None
    with client_from_args(args, args.workers) as client:
        items, scores = recommend_all(
            model.user_factors_, model.item_factors_, seen, args.n, client=client
        )
    if args.out is None:
        stores.write_recommendations(
            args.store, items, scores, {"n": args.n, "exclude_seen": exclude}
        )
        where = f"{args.store}/recommendations"
    else:
        table = recommendations_table(
            items, scores, model.user_ids_, model.item_ids_, model.titles_
        )
        write_table(table, args.out)
        where = str(args.out)
    seconds = time.perf_counter() - start
    summary = {"users": int(items.shape[0]), "n": args.n, "out": where, "seconds": seconds}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"top {args.n} for {items.shape[0]} users written to {where} in {seconds:.1f} s")
    return 0


def run_similar(args: argparse.Namespace) -> int:
    from dask_coded_als.engine import CodedALS

    model = CodedALS.load(args.store)
    if args.item is not None:
        print_rows(model.similar_items(args.item, n=args.n), args.json)
    else:
        print_rows(model.similar_users(args.user, n=args.n), args.json)
    return 0
