"""Command-line interface: ``dask-coded-als SUBCOMMAND ...``.

Thin by design: every subcommand parses its options, calls the public API and maps failures to
exit codes with a one-line message (no tracebacks).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dask_coded_als import __version__
from dask_coded_als.ingest import FORMAT_NAMES

__all__ = ["main", "EXIT_CODES"]

#: Exit codes: 0 success, 1 unexpected internal error, 2 bad input or usage, 3 cluster
#: failure, 4 numerical failure (rank-deficient data, non-finite factors), 130 interrupted.
EXIT_CODES = {"ok": 0, "internal": 1, "input": 2, "cluster": 3, "numerical": 4, "interrupt": 130}

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "datasets" / "sample"


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line with the input exit code."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_CODES["input"], f"{self.prog}: error: {message}\n")


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not np.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _partition(text: str) -> tuple[int, int] | str:
    """``auto`` or ``P,R`` (two positive integers)."""
    if text == "auto":
        return text
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected auto or P,R, got {text!r}")
    p, r = (_positive_int(part.strip()) for part in parts)
    return p, r


def _fraction(text: str) -> float:
    value = _non_negative_float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}")
    return value


# ---- cluster connection ---------------------------------------------------------------------


def _client(args: argparse.Namespace, n_workers: int):
    """A Client on the cluster named by --scheduler/--scheduler-file, or a LocalCluster."""
    from dask_coded_als.cluster import connect

    tls = {
        key: getattr(args, key)
        for key in ("tls_ca_file", "tls_cert", "tls_key")
        if getattr(args, key, None)
    }
    return connect(
        n_workers,
        scheduler=args.scheduler,
        scheduler_file=args.scheduler_file,
        timeout=args.connect_timeout,
        **tls,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _progress(out=sys.stderr) -> Callable[[dict], None]:
    def report(entry: dict) -> None:
        stage = entry["stages"]["E"]
        late = stage["late"] + stage["failed"]
        print(
            f"iteration {entry['iteration']:3d}  {entry['time']:6.2f} s  "
            f"first-K {stage['seconds']:6.2f} s  late {late}  objective {entry['objective']:.6e}",
            file=out,
            flush=True,
        )

    return report


# ---- subcommands ------------------------------------------------------------------------------


def cmd_ingest(args: argparse.Namespace) -> int:
    from dask_coded_als.ingest import ingest

    columns = args.columns.split(",") if args.columns else None
    if columns and any("=" in c for c in columns):  # role=NAME pairs pick columns by name
        columns = dict(c.split("=", 1) if "=" in c else (c, "") for c in columns)
    report = ingest(
        args.input,
        args.store,
        format=args.format,
        sep=args.sep,
        columns=columns,
        movies=args.movies,
        overwrite=args.overwrite,
        strict=args.strict,
    )
    print(
        f"ingested {report.n_ratings} ratings of {report.n_users} users on {report.n_items} "
        f"items ({report.n_duplicates} duplicates, last one kept) into {report.store_path} "
        f"in {report.seconds:.2f} s"
    )
    return 0


def _model_from_args(args: argparse.Namespace):
    from dask_coded_als.engine import CodedALS

    return CodedALS(
        n_factors=args.factors,
        n_workers=args.workers,
        h=args.h,
        partition=args.partition,
        n_stragglers=args.stragglers,
        mode=args.mode,
        protocol=args.protocol,
        straggler_model=args.straggler_model,
        straggler_delay=args.straggler_delay,
        points=args.points,
        max_iter=args.iterations,
        tol=args.tol,
        regularization=args.regularization,
        seed=args.seed,
        stage_timeout=args.stage_timeout,
    )


def _summary(model, store_path: str | None = None) -> dict[str, Any]:
    times = [e["time"] for e in model.history_]
    return {
        "store": store_path,
        "mode": model.mode,
        "h": getattr(model, "h_", None),
        "partition": getattr(model, "partition_", None),
        "n_workers": model.n_workers,
        "n_factors": model.n_factors,
        "iterations": model.n_iter_,
        "converged": bool(model.converged_),
        "objective": model.history_[-1]["objective"],
        "median_iteration_seconds": float(np.median(times)),
        "timings": model.timings_,
    }


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


def _resume_state(store, fingerprint: dict[str, Any]) -> dict[str, Any]:
    from dask_coded_als import store as stores
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


def cmd_fit(args: argparse.Namespace) -> int:
    from dask_coded_als import store as stores

    store = stores.open_store(args.store)
    R = stores.ratings_matrix(store)
    model = _model_from_args(args)
    model._settings(R.shape)  # bad options fail before any cluster starts
    # as stored (JSON): a partition (p, r) reads back as a list
    fingerprint = json.loads(json.dumps({key: getattr(args, key) for key in FINGERPRINT}))
    resume = _resume_state(store, fingerprint) if args.resume else None
    if resume is not None:
        print(f"resuming from the checkpoint at iteration {resume['iteration']}", file=sys.stderr)

    def checkpoint(state: dict) -> None:
        attrs = {
            "fingerprint": fingerprint,
            "iteration": state["iteration"],
            "history": _jsonable(state["history"]),
        }
        stores.write_checkpoint(store, state["B"], attrs)

    with _client(args, args.workers) as client:
        # D is computed only once a cluster is there, so a failed connection leaves the store
        # as it was; the fit reads D from disk block by block.
        if not store.has_gram:
            stores.compute_gram(store)
        D = stores.gram_array(store)[0]
        model.fit(
            R,
            client=client,
            gram=D,
            callback=None if args.json else _progress(),
            checkpoint=checkpoint,
            resume=resume,
        )
    params = {k: v for k, v in vars(args).items() if k not in ("func", "json")}
    stores.write_factors(
        store,
        model.user_factors_,
        model.item_factors_,
        {"parameters": params, "history": _jsonable(model.history_)},
    )
    stores.clear_checkpoint(store)
    summary = _summary(model, str(args.store))
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"fit {model.mode}: {model.n_iter_} iterations, objective "
            f"{summary['objective']:.6e}, median iteration "
            f"{summary['median_iteration_seconds']:.3f} s; factors written to {args.store}/factors"
        )
    return 0


def _jsonable(value: Any) -> Any:
    return json.loads(
        json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    )


def cmd_recommend(args: argparse.Namespace) -> int:
    from dask_coded_als import store as stores
    from dask_coded_als.recommend import recommend_by_id

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
    _print_rows(rows, args.json)
    return 0


def cmd_similar(args: argparse.Namespace) -> int:
    from dask_coded_als import store as stores
    from dask_coded_als.recommend import similar_by_id

    store = stores.open_store(args.store)
    _, V, _ = stores.read_factors(store)
    rows = similar_by_id(store.item_ids, V, args.item, n=args.n, titles=store.titles)
    _print_rows(rows, args.json)
    return 0


def _print_rows(rows: list[dict], as_json: bool) -> None:
    if as_json:
        print(json.dumps(_jsonable(rows)))
        return
    for rank, row in enumerate(rows, 1):
        title = f"  {row['title']}" if row.get("title") else ""
        print(f"{rank:3d}. item {row['item_id']}  score {row['score']:.4f}{title}")


#: How ``evaluate`` holds out ratings: a random part or the newest part of each user's ratings.
SPLITS = ("random", "temporal")


def _split_spec(method: str, test_fraction: float, seed: int) -> dict[str, Any]:
    """The split as recorded with factors fitted on its training part (seed only if used)."""
    spec: dict[str, Any] = {"method": method, "test_fraction": test_fraction}
    if method == "random":
        spec["seed"] = seed
    return spec


def _describe_split(spec: dict[str, Any]) -> str:
    share = f"{spec['test_fraction']:.0%} of each user's ratings"
    if spec["method"] == "temporal":
        return f"temporal split (the newest {share} held out)"
    return f"random split ({share} held out, seed {spec['seed']})"


def _split(store, R, spec: dict[str, Any]):
    """Training and test matrices of ``spec`` (validated: it may come from a store)."""
    from dask_coded_als.errors import InputError
    from dask_coded_als.evaluation import temporal_split, train_test_split

    method = spec.get("method")
    if method == "temporal":
        if not store.has_timestamps:
            raise InputError(
                f"{store.path}: the ratings have no timestamps, so there is no temporal split "
                f"(use --split random)"
            )
        return temporal_split(R, store.array("ratings/timestamp")[...], spec.get("test_fraction"))
    seed = spec.get("seed")
    if method != "random" or isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"{store.path}: the stored factors record an unreadable split {spec!r}")
    return train_test_split(R, spec.get("test_fraction"), seed)


def _stored_factors(store, args: argparse.Namespace):
    """The stored factors and the split they were fitted on; refuse what cannot be tested."""
    from dask_coded_als import store as stores
    from dask_coded_als.errors import InputError

    if args.factors is not None:
        raise InputError("--factors goes with --refit; without it the stored factors are scored")
    if not store.has_factors:
        raise InputError(
            f"{store.path}: no factors stored; pass --refit --factors D to fit on a training split"
        )
    U, V, attrs = stores.read_factors(store)
    spec = attrs.get("split")
    if not isinstance(spec, dict):
        # Factors fitted on every rating have seen the test ratings: their hits would be recalls
        # of training data, not predictions.
        raise InputError(
            f"{store.path}: the stored factors were fitted on all ratings, test ratings included; "
            f"pass --refit --factors D to fit on the training part of a split"
        )
    given = {"method": args.split, "test_fraction": args.test_fraction, "seed": args.seed}
    for key, value in given.items():
        if key in spec and value is not None and value != spec[key]:
            raise InputError(
                f"{store.path}: the stored factors were fitted on the training part of a "
                f"{_describe_split(spec)}; other split options would test them on ratings they "
                f"were trained on (pass --refit to fit anew)"
            )
    return U, V, spec


def cmd_evaluate(args: argparse.Namespace) -> int:
    from dask_coded_als import store as stores
    from dask_coded_als.errors import InputError
    from dask_coded_als.evaluation import evaluate_factors, evaluate_popularity

    store = stores.open_store(args.store)
    R = stores.ratings_matrix(store)
    result: dict[str, Any] = {}
    if args.refit:
        if args.factors is None:
            raise InputError("--refit needs --factors D")
        if args.seed is None:
            args.seed = 0  # the default of the model and of a random split
        model = _model_from_args(args)
        model._settings(R.shape)  # bad options fail before any cluster starts
        spec = _split_spec(args.split or "random", args.test_fraction or 0.2, args.seed)
        train, test = _split(store, R, spec)
        with _client(args, args.workers) as client:
            model.fit(train, client=client)
        U, V = model.user_factors_, model.item_factors_
        result["fit"] = _summary(model)
    else:
        U, V, spec = _stored_factors(store, args)
        train, test = _split(store, R, spec)
    result["factors"] = "refit" if args.refit else "stored"
    result["split"] = spec
    result["model"] = evaluate_factors(U, V, train, test, k=args.k, relevant=args.relevant)
    result["popularity"] = evaluate_popularity(train, test, k=args.k, relevant=args.relevant)
    if args.json:
        print(json.dumps(_jsonable(result)))
        return 0
    which = "factors fitted now" if args.refit else "stored factors"
    print(
        f"{which} (d={U.shape[1]}) on a {_describe_split(spec)}; "
        f"{result['model']['n_users']} users with a test rating >= {args.relevant:g}"
    )
    _print_metrics(result, args.k)
    return 0


def cmd_table1(args: argparse.Namespace) -> int:
    from dask_coded_als.experiments import run_table1

    result = run_table1(quick=args.quick, out_dir=Path(args.out), seed=args.seed)
    _print_experiment(result, args.json)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from dask_coded_als.experiments import run_bench

    result = run_bench(quick=args.quick, out_dir=Path(args.out), seed=args.seed)
    _print_experiment(result, args.json)
    return 0


def _print_experiment(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(_jsonable(result)))
        return
    for path in result.get("files", []):
        print(f"wrote {path}")
    print(f"wall time {result.get('wall_time', float('nan')):.1f} s")


def _print_metrics(result: dict[str, Any], k: int) -> None:
    """The metrics table of the model and popularity, then one line on which ranker won."""
    names = [name for name in result["model"] if name not in ("n_users", "k")]
    print(f"{'':12s}" + "".join(f"{name.replace('@k', f'@{k}'):>14s}" for name in names))
    for label in ("model", "popularity"):
        values = result[label]
        print(f"{label:12s}" + "".join(f"{values[name]:14.4f}" for name in names))
    print(_verdict(result["model"], result["popularity"], k))


def _verdict(model: dict[str, Any], popular: dict[str, Any], k: int) -> str:
    """One line: which ranker has the higher precision@k and NDCG@k, and by how much."""
    parts, winners = [], set()
    for key, label in (("precision@k", f"precision@{k}"), ("ndcg@k", f"NDCG@{k}")):
        ours, theirs = model[key], popular[key]
        winners.add("model" if ours > theirs else "popularity" if theirs > ours else "tie")
        high, low = max(ours, theirs), min(ours, theirs)
        ratio = f" ({high / low:.2f}x)" if low > 0 else ""
        parts.append(f"{label} {ours:.4f} vs {theirs:.4f}{ratio}")
    detail = ", ".join(parts)
    if winners == {"model"}:
        return f"the model beats popularity: {detail}"
    if winners == {"popularity"}:
        return f"popularity beats the model: {detail}"
    if winners == {"tie"}:
        return f"the model and popularity tie: {detail}"
    return f"no clear winner between the model and popularity: {detail}"


def cmd_demo(args: argparse.Namespace) -> int:
    """Ingest the bundled sample, fit coded (with stragglers) and uncoded, recommend, evaluate."""
    from distributed import Client

    from dask_coded_als import store as stores
    from dask_coded_als.engine import CodedALS, local_cluster
    from dask_coded_als.evaluation import evaluate_factors, evaluate_popularity
    from dask_coded_als.ingest import ingest
    from dask_coded_als.recommend import recommend_by_id

    data = Path(args.data) if args.data else SAMPLE_DIR
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="dask-coded-als-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    store_path = out / "sample.zarr"
    movies = data / "movies.csv"
    t0 = time.perf_counter()
    report = ingest(
        data / "ratings.csv",
        store_path,
        movies=movies if movies.exists() else None,
        overwrite=True,
    )
    print(
        f"1. ingested {report.n_ratings} ratings ({report.n_users} users x {report.n_items} "
        f"items) into {store_path}"
    )
    store = stores.open_store(store_path)
    R = stores.ratings_matrix(store)
    split = _split_spec("random", 0.2, 0)
    train, test = _split(store, R, split)
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
    print(f"2. starting a LocalCluster of {W} worker processes on 127.0.0.1")
    with local_cluster(W) as cluster, Client(cluster, timeout="60s") as client:
        coded = CodedALS(mode="coded", **common).fit(train, client=client)
        uncoded = CodedALS(mode="uncoded", **common).fit(train, client=client)
    t_coded = float(np.median([e["time"] for e in coded.history_]))
    t_uncoded = float(np.median([e["time"] for e in uncoded.history_]))
    gap = np.linalg.norm(
        coded.user_factors_ @ coded.item_factors_.T
        - uncoded.user_factors_ @ uncoded.item_factors_.T
    ) / np.linalg.norm(uncoded.user_factors_ @ uncoded.item_factors_.T)
    print(
        f"3. fit d={args.factors} on the training split with {s} of {W} workers {delay:g} s late "
        f"in every task:\n"
        f"   coded (h={coded.h_}, first {coded.h_**2 + coded.h_ - 1} of {W}): median iteration "
        f"{t_coded:.3f} s\n"
        f"   uncoded (waits for all {W}):           median iteration {t_uncoded:.3f} s "
        f"({t_uncoded / t_coded:.1f}x slower)\n"
        f"   same factors: relative difference of U V^T = {gap:.1e}"
    )
    stores.write_factors(
        store,
        coded.user_factors_,
        coded.item_factors_,
        # The split goes with the factors: `evaluate` scores them on the same test ratings.
        {"parameters": _jsonable(common), "history": _jsonable(coded.history_), "split": split},
    )
    user = store.user_ids[0]
    rows = recommend_by_id(
        store.user_ids,
        store.item_ids,
        coded.user_factors_,
        coded.item_factors_,
        train,
        user,
        n=5,
        titles=store.titles,
    )
    print(
        f"4. top 5 for user {user} (items rated in training excluded; scores are affinities "
        f"for ranking, not predicted ratings):"
    )
    for rank, row in enumerate(rows, 1):
        title = f"  {row['title']}" if row.get("title") else ""
        print(f"   {rank}. item {row['item_id']}{title}  ({row['score']:.3f})")
    model_metrics = evaluate_factors(coded.user_factors_, coded.item_factors_, train, test, k=10)
    popular = evaluate_popularity(train, test, k=10)
    print(f"5. held-out evaluation at k=10 on a {_describe_split(split)}:")
    _print_metrics({"model": model_metrics, "popularity": popular}, 10)
    print(
        f"done in {time.perf_counter() - t0:.1f} s; store with ratings, factors and "
        f"history: {store_path} (`dask-coded-als evaluate {store_path}` scores them again)"
    )
    return 0


# ---- parser -----------------------------------------------------------------------------------


def _add_fit_options(p: argparse.ArgumentParser, factors_required: bool = True) -> None:
    from dask_coded_als.engine import MODES, PROTOCOLS
    from dask_coded_als.stragglers import STRAGGLER_MODELS

    p.add_argument("--factors", type=_positive_int, required=factors_required, metavar="D")
    p.add_argument("--workers", type=_positive_int, default=8, metavar="W")
    p.add_argument("--stragglers", type=_non_negative_int, default=0, metavar="S")
    p.add_argument("--h", type=_positive_int, default=None, metavar="H")
    p.add_argument(
        "--partition",
        type=_partition,
        default=None,
        metavar="P,R",
        help="the code: D's rows split P ways, its contraction R ways (or auto)",
    )
    p.add_argument("--mode", choices=MODES, default="coded")
    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="fast",
        help="fast: one exchange per iteration; paper: the paper's three (same iterates)",
    )
    p.add_argument("--straggler-model", choices=STRAGGLER_MODELS, default="none")
    p.add_argument("--straggler-delay", type=_non_negative_float, default=0.0, metavar="SECONDS")
    p.add_argument("--points", choices=("circle", "real"), default=None)
    p.add_argument("--iterations", type=_non_negative_int, default=50, metavar="T")
    p.add_argument("--tol", type=_non_negative_float, default=1e-9)
    p.add_argument("--regularization", type=_non_negative_float, default=0.0, metavar="L")
    p.add_argument("--seed", type=_non_negative_int, default=0)
    p.add_argument("--stage-timeout", type=_non_negative_float, default=120.0, metavar="SECONDS")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--scheduler", metavar="ADDRESS", help="e.g. tcp://127.0.0.1:8786")
    group.add_argument("--scheduler-file", metavar="FILE")
    p.add_argument("--connect-timeout", type=_non_negative_float, default=20.0)
    p.add_argument("--tls-ca-file", metavar="FILE", help="CA certificate of a TLS cluster")
    p.add_argument("--tls-cert", metavar="FILE", help="client certificate")
    p.add_argument("--tls-key", metavar="FILE", help="client private key")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dask-coded-als",
        description="Coded alternating least squares on Dask, tolerant of slow and dead workers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each phase")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("ingest", help="load ratings (text, Parquet, part files) into a Zarr store")
    p.add_argument("input", help="a ratings file, a directory of part files or a glob pattern")
    p.add_argument("store")
    p.add_argument("--format", choices=FORMAT_NAMES, default="auto")
    p.add_argument("--sep")
    p.add_argument(
        "--columns",
        help="by position: user,item,rating[,timestamp] (_ skips a field); or by name: "
        "user=NAME,item=NAME,rating=NAME[,timestamp=NAME]",
    )
    p.add_argument("--movies", help="movies.csv, movies.dat or u.item with titles")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--strict", action="store_true", help="duplicate ratings are an error")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("fit", help="factorize a store's ratings on a Dask cluster")
    p.add_argument("store")
    _add_fit_options(p)
    p.add_argument(
        "--resume", action="store_true", help="continue from the checkpoint of an interrupted fit"
    )
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("recommend", help="top items for a user")
    p.add_argument("store")
    p.add_argument("--user", required=True)
    p.add_argument("-n", type=_positive_int, default=10)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("similar", help="items most similar to an item")
    p.add_argument("store")
    p.add_argument("--item", required=True)
    p.add_argument("-n", type=_positive_int, default=10)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_similar)

    p = sub.add_parser(
        "evaluate",
        help="hold-out ranking metrics of the stored factors (or a refit) against popularity",
    )
    p.add_argument("store")
    p.add_argument(
        "--refit",
        action="store_true",
        help="fit anew on the training part of the split (needs --factors; the fit options "
        "apply only then); default: score the factors stored in STORE, which must have been "
        "fitted on the training part of a recorded split",
    )
    _add_fit_options(p, factors_required=False)
    p.add_argument(
        "--split",
        choices=SPLITS,
        default=None,
        help="hold out a random part (default) or the newest part of each user's ratings",
    )
    p.add_argument("--test-fraction", type=_fraction, default=None, help="default 0.2")
    p.add_argument("--relevant", type=_non_negative_float, default=4.0)
    p.add_argument("-k", type=_positive_int, default=10)
    # None: not given, so a stored split's own seed applies (with --refit: 0).
    p.set_defaults(func=cmd_evaluate, seed=None)

    for name, func, what in (
        ("table1", cmd_table1, "the paper's Table I: time per iteration for every (k, h) cell"),
        ("bench", cmd_bench, "coded vs uncoded vs replication vs svd_compressed, with plots"),
    ):
        p = sub.add_parser(name, help=what)
        p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
        p.add_argument("--json", action="store_true")
        p.add_argument("--out", default="docs/results", help="where tables and plots go")
        p.add_argument("--seed", type=_non_negative_int, default=0)
        p.set_defaults(func=func)

    p = sub.add_parser("demo", help="the whole flow on the bundled sample, in under a minute")
    p.add_argument("--data", help="a folder with ratings.csv (and movies.csv)")
    p.add_argument("--out", help="where to write the store (default: a new temporary folder)")
    p.add_argument("--factors", type=_positive_int, default=10)
    p.add_argument("--iterations", type=_positive_int, default=15)
    p.add_argument("--straggler-delay", type=_non_negative_float, default=0.5)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    if not args.verbose:
        # distributed logs worker restarts and cancelled tasks; the engine reports what matters.
        logging.getLogger("distributed").setLevel(logging.CRITICAL)
    from dask_coded_als.als import NonFiniteFactorsError, RankDeficientError
    from dask_coded_als.errors import ClusterError, InputError

    prog = parser.prog
    try:
        return args.func(args)
    except (RankDeficientError, NonFiniteFactorsError) as exc:
        print(f"{prog}: numerical error: {_first_line(exc)}", file=sys.stderr)
        return EXIT_CODES["numerical"]
    except (InputError, ValueError, FileNotFoundError) as exc:
        print(f"{prog}: error: {_first_line(exc)}", file=sys.stderr)
        return EXIT_CODES["input"]
    except ClusterError as exc:
        print(f"{prog}: cluster error: {_first_line(exc)}", file=sys.stderr)
        return EXIT_CODES["cluster"]
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_CODES["interrupt"]
    except Exception as exc:  # the promise is one line, never a traceback
        print(f"{prog}: internal error: {type(exc).__name__}: {_first_line(exc)}", file=sys.stderr)
        return EXIT_CODES["internal"]


if __name__ == "__main__":
    sys.exit(main())
