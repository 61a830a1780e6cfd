"""``dask-coded-als evaluate``: hold-out ranking metrics of the stored factors (or a refit)
against recommending the most popular items."""

from __future__ import annotations

import argparse
import json
from typing import Any

from dask_coded_als._util import jsonable
from dask_coded_als.cli.options import (
    add_model_options,
    client_from_args,
    fit_summary,
    fraction,
    model_from_args,
    non_negative_float,
    positive_int,
    print_metrics,
)
from dask_coded_als.recsys.evaluation import SPLITS, describe_split, split_spec


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="hold-out ranking metrics of the stored factors (or a refit) against popularity",
    )
    p.add_argument("store")
    p.add_argument(
        "--refit",
        action="store_true",
        help="fit anew on the training part of the split (the fit options apply only then); "
        "default: score the factors stored in STORE, which must have been "
        "fitted on the training part of a recorded split",
    )
    add_model_options(
        p,
        factors="with --refit; default: about the square root of the smaller side of R, at "
        "most 150",
        seed="seeds the split, the initial factor and the straggler model (default: 0 with "
        "--refit, else the stored split's)",
    )
    p.add_argument(
        "--split",
        choices=SPLITS,
        default=None,
        help="hold out a random part or the newest part of each user's ratings (default: "
        "random with --refit, else the stored split's)",
    )
    p.add_argument(
        "--test-fraction",
        type=fraction,
        default=None,
        help="the share of each user's ratings held out (default: 0.2 with --refit, else the "
        "stored split's)",
    )
    p.add_argument(
        "--relevant",
        type=non_negative_float,
        default=4.0,
        help="test ratings at least this high are the hits to find",
    )
    p.add_argument("-k", type=positive_int, default=10, help="the length of each ranked list")
    p.set_defaults(func=run)


def split(store: Any, R: Any, spec: dict[str, Any]) -> tuple[Any, Any]:
    """Training and test matrices of ``spec`` (validated: it may come from a store)."""
    from dask_coded_als.errors import InputError
    from dask_coded_als.recsys.evaluation import split_ratings

    if spec.get("method") == "temporal" and not store.has_timestamps:
        raise InputError(
            f"{store.path}: the ratings have no timestamps, so there is no temporal split "
            f"(use --split random)"
        )
    stamps = store.array("ratings/timestamp")[...] if store.has_timestamps else None
    try:
        return split_ratings(R, spec, stamps)
    except InputError as exc:
        if str(exc).startswith("unreadable split"):
            raise InputError(f"{store.path}: the stored factors record an {exc}") from None
        raise


def _stored_factors(store: Any, args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    """The stored factors and the split they were fitted on; refuse what cannot be tested."""
    from dask_coded_als.data import store as stores
    from dask_coded_als.errors import InputError

    if args.factors is not None:
        raise InputError("--factors goes with --refit; without it the stored factors are scored")
    if not store.has_factors:
        raise InputError(
            f"{store.path}: no factors stored; pass --refit to fit on a training split"
        )
    U, V, attrs = stores.read_factors(store)
    spec = attrs.get("split")
    if not isinstance(spec, dict):
        # Factors fitted on every rating have seen the test ratings: their hits would be recalls
        # of training data, not predictions.
        raise InputError(
            f"{store.path}: the stored factors were fitted on all ratings, test ratings included; "
            f"pass --refit to fit on the training part of a split"
        )
    # the seed's default, 0, is no choice: only a seed given counts
    seed = args.seed if "seed" in getattr(args, "given", ()) else None
    given = {"method": args.split, "test_fraction": args.test_fraction, "seed": seed}
    for key, value in given.items():
        if key in spec and value is not None and value != spec[key]:
            raise InputError(
                f"{store.path}: the stored factors were fitted on the training part of a "
                f"{describe_split(spec)}; other split options would test them on ratings they "
                f"were trained on (pass --refit to fit anew)"
            )
    return U, V, spec


def run(args: argparse.Namespace) -> int:
    from dask_coded_als.data import store as stores
    from dask_coded_als.recsys.evaluation import evaluate_factors, evaluate_popularity

    store = stores.open_store(args.store)
    R = stores.ratings_matrix(store)
    result: dict[str, Any] = {}
    if args.refit:
        model = model_from_args(args)
        model._settings(R.shape)  # bad options fail before any cluster starts
        spec = split_spec(args.split or "random", args.test_fraction or 0.2, args.seed)
        train, test = split(store, R, spec)
        with client_from_args(args, args.workers) as client:
            model.fit(train, client=client)
        U, V = model.user_factors_, model.item_factors_
        result["fit"] = fit_summary(model)
    else:
        U, V, spec = _stored_factors(store, args)
        train, test = split(store, R, spec)
    result["factors"] = "refit" if args.refit else "stored"
    result["split"] = spec
    result["model"] = evaluate_factors(U, V, train, test, k=args.k, relevant=args.relevant)
    result["popularity"] = evaluate_popularity(train, test, k=args.k, relevant=args.relevant)
    if args.json:
        print(json.dumps(jsonable(result)))
        return 0
    which = "factors fitted now" if args.refit else "stored factors"
    print(
        f"{which} (d={U.shape[1]}) on a {describe_split(spec)}; "
        f"{result['model']['n_users']} users with a test rating >= {args.relevant:g}"
    )
    print_metrics(result, args.k)
    return 0
