"""``dask-coded-als fit``: factorize a store's ratings on a Dask cluster, with checkpoints."""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import sys
import urllib.request
from typing import Any

from dask_coded_als._util import jsonable
from dask_coded_als.cli.options import (
    add_model_options,
    as_flags,
    client_from_args,
    fit_summary,
    model_from_args,
)
from dask_coded_als.cli.progress import bar, rounds

#: The options a checkpoint must agree with to be resumed: a resumed fit takes them from the
#: checkpoint, and those given again must be the same.
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
    "dtype",
    "regularization",
    "seed",
    "weighting",
)
#: The options a resumed fit takes from the checkpoint unless given again: they may change
#: without changing the iterates.
RESUMED = ("iterations", "tol", "protocol", "stage_timeout", "recovery_timeout")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fit",
        help="factorize a store's ratings on a Dask cluster",
        description="Factorize a store's ratings R into user and item factors on a Dask "
        "cluster, checkpointing after every iteration; the factors are written to the store.",
    )
    p.add_argument("store")
    add_model_options(
        p,
        factors="default: about the square root of the smaller side of R, at most 150; with "
        "--resume the checkpoint's",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint of an interrupted fit, with its options",
    )
    p.add_argument(
        "--dashboard",
        action="store_true",
        help="serve the LocalCluster's dashboard on 127.0.0.1 and print its address (needs bokeh)",
    )
    p.set_defaults(func=run)


def _value(key: str, saved: Any) -> Any:
    """An option as argparse gives it, from its JSON form in a checkpoint."""
    return tuple(saved) if key == "partition" and isinstance(saved, list) else saved


def _resume_state(store: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The checkpoint's state; sets the options of ``args`` that were not given from it."""
    from dask_coded_als.data import store as stores
    from dask_coded_als.errors import InputError

    found = stores.read_checkpoint(store)
    if found is None:
        raise InputError(
            f"{store.path}: no checkpoint to resume from; run without --resume to start the fit"
        )
    B, attrs = found
    saved = attrs.get("fingerprint")
    if not isinstance(saved, dict):
        raise InputError(f"{store.path}: the checkpoint is corrupt (no options)")
    given = getattr(args, "given", frozenset())
    differ = [
        f"{key} {saved.get(key, 'unrecorded')}, not {jsonable(getattr(args, key))}"
        for key in FINGERPRINT
        if key in given and jsonable(getattr(args, key)) != saved.get(key, ...)  # ...: unrecorded
    ]
    if differ:
        raise InputError(
            f"{store.path}: the checkpoint was written with other options ({'; '.join(differ)}); "
            f"leave them out to take the checkpoint's, or fit anew without --resume"
        )
    # An option a checkpoint does not record (one written before the option existed) keeps
    # its flag's value, as do the RESUMED options of checkpoints written before they were kept.
    options = attrs.get("options") if isinstance(attrs.get("options"), dict) else {}
    stored = {**options, **saved}
    for key in FINGERPRINT + RESUMED:
        if key not in given and key in stored:
            setattr(args, key, _value(key, stored[key]))
    try:
        return {"B": B, "iteration": int(attrs["iteration"]), "history": list(attrs["history"])}
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{store.path}: the checkpoint is corrupt (incomplete state)") from None


def _dashboard(client: Any, args: argparse.Namespace) -> str:
    """The address of the cluster's dashboard, in words."""
    link = client.dashboard_link
    if not (args.scheduler or args.scheduler_file):
        return link  # the LocalCluster's, started with it
    # A scheduler always has an HTTP server; it serves the dashboard only if started with one.
    try:
        with urllib.request.urlopen(link, timeout=5):
            return link
    except (OSError, ValueError):
        return f"none at {link} (the scheduler was started without one)"


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
    from dask_coded_als.errors import ClusterError, InputError, UnreachableStoreError
    from dask_coded_als.recsys.weighting import fit_weighting

    if args.dashboard and importlib.util.find_spec("bokeh") is None:
        raise InputError("--dashboard needs bokeh: pip install 'dask-coded-als[dashboard]'")
    store = stores.open_store(args.store)
    R = stores.ratings_matrix(store)
    resume = _resume_state(store, args) if args.resume else None
    model = model_from_args(args)
    settings = model._settings(R.shape)  # bad options fail before any cluster starts
    weighting = fit_weighting(args.weighting, R)
    if resume is not None:
        # e.g. --iterations below the checkpoint's iteration
        resume = model._check_resume(resume, min(R.shape), settings.n_factors)
        print(
            f"resuming from the checkpoint at iteration {resume['iteration']} of {args.iterations}",
            file=sys.stderr,
        )
    # as stored (JSON): a partition (p, r) reads back as a list
    fingerprint = jsonable({key: getattr(args, key) for key in FINGERPRINT})
    options = jsonable({key: getattr(args, key) for key in RESUMED})

    # the iteration of the checkpoint in the store, for the message of a fit cut short
    saved = {"iteration": None if resume is None else resume["iteration"]}

    def checkpoint(state: dict) -> None:
        attrs = {
            "fingerprint": fingerprint,
            "options": options,
            "iteration": state["iteration"],
            "history": jsonable(state["history"]),
        }
        stores.write_checkpoint(store, state["B"], attrs)
        saved["iteration"] = state["iteration"]

    # A damaged D must not become other factors: refused before any cluster starts.
    has_gram = stores.gram_weighting(store) == args.weighting
    if has_gram:
        check_gram(store, *stores.gram_array(store, args.weighting), weighting.apply(R))

    with client_from_args(args, args.workers, dashboard=args.dashboard) as client:
        if args.dashboard:
            print(f"dashboard: {_dashboard(client, args)}", file=sys.stderr, flush=True)
        # D is computed only once a cluster is there, so a failed connection leaves the store
        # as it was. The workers compute it and build their shards from the store when they
        # can open it; otherwise this process does both (reading D block by block). D is of
        # the weighted R: one of another weighting is replaced.
        try:
            stores.check_workers_read(store, client)
            shared = True
        except UnreachableStoreError as exc:
            print(f"{as_flags(str(exc))}; D and the shards are made here", file=sys.stderr)
            shared = False
        if not has_gram:
            if not shared:
                memory.check_gram_here(min(R.shape))  # D is formed in this process
            with bar(args, "D", "block") as progress:
                stores.compute_gram(
                    store,
                    overwrite=True,
                    client=client if shared else None,
                    dtype=args.dtype,
                    weighting=weighting,
                    progress=progress,
                )
        if shared:
            D = stores.gram_source(store, args.weighting)
        else:
            D = stores.gram_array(store, args.weighting)[0]
        start = 0 if resume is None else resume["iteration"]
        with (
            bar(args, "shards", "worker") as placed,
            rounds(args, args.iterations, start) as callback,
        ):
            try:
                model.fit(
                    R,
                    client=client,
                    gram=D,
                    callback=callback,
                    checkpoint=checkpoint,
                    resume=resume,
                    progress=placed,
                    user_ids=store.user_ids,
                    item_ids=store.item_ids,
                    titles=store.titles,
                )
            except ClusterError as exc:
                if saved["iteration"] is None:
                    raise  # nothing to resume from
                raise ClusterError(f"{exc}; {_resume_hint(args, saved['iteration'])}") from None
    params = {k: v for k, v in vars(args).items() if k not in ("func", "json", "given", "argv")}
    model.save(store, {"parameters": jsonable(params)})
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
        repeated = {w: n for w, n in model.wrong_answers_.items() if n > 1}
        if repeated:
            print(f"workers whose answers were wrong more than once (worker: rounds): {repeated}")
    return 0
