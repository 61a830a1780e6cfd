"""``dask-coded-als fit``: factorize a store's ratings on a Dask cluster, with checkpoints."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

from dask_coded_als._util import jsonable
from dask_coded_als.cli.options import (
    add_model_options,
    client_from_args,
    fit_summary,
    model_from_args,
    progress,
)

#: The options a checkpoint must agree with to be resumed (iterations and tol may change).
FINGERPRINT = (
    "factors",
    "workers",
    "h",
    "partition",
    "stragglers",
    "mode",
    "straggler_model",
    "straggler_delay",
    "points",
    "regularization",
    "seed",
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit", help="factorize a store's ratings on a Dask cluster")
    p.add_argument("store")
    add_model_options(p)
    p.add_argument(
        "--resume", action="store_true", help="continue from the checkpoint of an interrupted fit"
    )
    p.set_defaults(func=run)


def _resume_state(store: Any, fingerprint: dict[str, Any]) -> dict[str, Any]:
    from dask_coded_als.data import store as stores
    from dask_coded_als.errors import InputError

    found = stores.read_checkpoint(store)
    if found is None:
        raise InputError(f"{store.path}: no checkpoint to resume from")
    B, attrs = found
    saved = attrs.get("fingerprint")
    if saved != fingerprint:
        differ = sorted(k for k in fingerprint if not saved or saved.get(k) != fingerprint[k])
        raise InputError(
            f"{store.path}: the checkpoint was written with other options ({', '.join(differ)})"
        )
    try:
        return {"B": B, "iteration": int(attrs["iteration"]), "history": list(attrs["history"])}
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{store.path}: the checkpoint is corrupt (incomplete state)") from None


def _resume_hint(args: argparse.Namespace, iteration: int) -> str:
    """What to run once the cluster is back, after a fit cut short by a cluster error."""
    words = [word for word in getattr(args, "argv", []) if word not in ("-v", "--verbose")]
    command = (
        shlex.join(["dask-coded-als", *words, *([] if "--resume" in words else ["--resume"])])
        if words
        else "the same command with --resume"
    )
    return f"the checkpoint holds iteration {iteration}; to continue from it run: {command}"


def run(args: argparse.Namespace) -> int:
    from dask_coded_als.data import store as stores
    from dask_coded_als.data.verify import check_gram
    from dask_coded_als.engine import memory
    from dask_coded_als.errors import ClusterError

    store = stores.open_store(args.store)
    R = stores.ratings_matrix(store)
    model = model_from_args(args)
    model._settings(R.shape)  # bad options fail before any cluster starts
    # as stored (JSON): a partition (p, r) reads back as a list
    fingerprint = jsonable({key: getattr(args, key) for key in FINGERPRINT})
    resume = _resume_state(store, fingerprint) if args.resume else None
    if resume is not None:
        print(f"resuming from the checkpoint at iteration {resume['iteration']}", file=sys.stderr)

    # the iteration of the checkpoint in the store, for the message of a fit cut short
    saved = {"iteration": None if resume is None else resume["iteration"]}

    def checkpoint(state: dict) -> None:
        attrs = {
            "fingerprint": fingerprint,
            "iteration": state["iteration"],
            "history": jsonable(state["history"]),
        }
        stores.write_checkpoint(store, state["B"], attrs)
        saved["iteration"] = state["iteration"]

    if store.has_gram:  # a damaged D must not become other factors: refused before any cluster
        check_gram(store, *stores.gram_array(store), R)
    with client_from_args(args, args.workers) as client:
        # D is computed only once a cluster is there, so a failed connection leaves the store
        # as it was; the fit reads D from disk block by block.
        if not store.has_gram:
            memory.check_gram_here(min(R.shape))  # D is formed in this process
            stores.compute_gram(store)
        D = stores.gram_array(store)[0]
        try:
            model.fit(
                R,
                client=client,
                gram=D,
                callback=None if args.json else progress(),
                checkpoint=checkpoint,
                resume=resume,
            )
        except ClusterError as exc:
            if saved["iteration"] is None:
                raise  # nothing to resume from
            raise ClusterError(f"{exc}; {_resume_hint(args, saved['iteration'])}") from None
    params = {k: v for k, v in vars(args).items() if k not in ("func", "json", "argv")}
    stores.write_factors(
        store,
        model.user_factors_,
        model.item_factors_,
        {"parameters": jsonable(params), "history": jsonable(model.history_)},
    )
    stores.clear_checkpoint(store)
    summary = fit_summary(model, str(args.store))
    if args.json:
        print(json.dumps(jsonable(summary)))
    else:
        print(
            f"fit {model.mode}: {model.n_iter_} iterations, objective "
            f"{summary['objective']:.6e}, median iteration "
            f"{summary['median_iteration_seconds']:.3f} s; factors written to {args.store}/factors"
        )
    return 0
