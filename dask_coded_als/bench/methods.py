"""The method benchmark: coded (fast and paper protocols) against uncoded, replication and
``dask.array.linalg.svd_compressed`` under straggler models, on one cluster and one R."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
from distributed import Client, WorkerPlugin, as_completed

from dask_coded_als._util import jsonable
from dask_coded_als.bench.common import (
    BENCH_FULL,
    BENCH_QUICK,
    METHOD_OPTIONS,
    METHODS,
    TASK_TIMEOUT,
    BenchConfig,
    fit_addresses,
    machine,
    median,
    ratio,
    relative_gap,
    synthetic_ratings,
    time_to_gap,
    timed_rounds,
    using_cluster,
    warm_up,
)
from dask_coded_als.engine import CodedALS
from dask_coded_als.engine.stragglers import StragglerModel

__all__ = ["run_bench"]


class _DelayPlugin(WorkerPlugin):
    """Make worker tasks late the way the engine's straggler models do, for dask.array graphs.

    After a task finishes on a straggling worker, the worker's event loop sleeps before the
    result is registered: ``fixed`` delays every task of the chosen workers by ``delay``
    seconds, ``random`` delays each task with probability s / W, ``shifted-exponential`` by
    X times the task's compute time with X exponential of mean ``delay``. The worker reports
    its result, and serves the data it holds, that much later.
    """

    name = "dask-coded-als-delays"

    def __init__(
        self, model: str, delay: float, slow: Sequence[str], probability: float, seed: int
    ):
        self.model = model
        self.delay = float(delay)
        self.slow = set(slow)
        self.probability = float(probability)
        self.seed = int(seed)

    def setup(self, worker: Any) -> None:
        self.worker = worker
        self.rng = random.Random(f"{self.seed}-{worker.address}")

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if start != "executing" or finish != "memory":
            return
        pause = 0.0
        if self.model == "fixed" and self.worker.address in self.slow:
            pause = self.delay
        elif self.model == "random" and self.rng.random() < self.probability:
            pause = self.delay
        elif self.model == "shifted-exponential" and self.delay > 0:
            ts = self.worker.state.tasks.get(key)
            spans = [s["stop"] - s["start"] for s in getattr(ts, "startstops", ())]
            spans = [x for x in spans if x > 0]
            pause = self.rng.expovariate(1.0 / self.delay) * (spans[-1] if spans else 0.0)
        if pause > 0:
            time.sleep(pause)


def _wait_all(client: Client, futures: list, timeout: float = TASK_TIMEOUT) -> None:
    """Wait (bounded) until every future is done; raise the first task error."""
    for future in as_completed(futures, timeout=timeout, loop=client.loop):
        if future.status == "error":
            raise future.exception()


def _place_rows(client: Client, R: np.ndarray, addresses: list[str]) -> tuple[Any, list, float]:
    """Scatter R in ``len(addresses)`` row blocks, block i to worker i; the dask array of them."""
    import dask.array as da

    start = time.perf_counter()
    edges = np.linspace(0, R.shape[0], len(addresses) + 1).astype(int)
    blocks = [np.ascontiguousarray(R[a:b]) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    futures = [
        client.scatter(block, workers=[address], hash=False, timeout=TASK_TIMEOUT)
        for block, address in zip(blocks, addresses, strict=True)
    ]
    X = da.concatenate(
        [
            da.from_delayed(f, shape=block.shape, dtype=block.dtype)
            for f, block in zip(futures, blocks, strict=True)
        ]
    )
    return X, futures, time.perf_counter() - start


def _svd_compressed_run(
    client: Client,
    X: Any,
    addresses: list[str],
    d: int,
    n_power_iter: int,
    seed: int,
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Wall time of one svd_compressed on the cluster, and its factors gathered at the master."""
    import dask.array as da

    start = time.perf_counter()
    u, s, v = da.linalg.svd_compressed(X, d, n_power_iter=n_power_iter, seed=seed)
    futures = client.compute([u, s, v], workers=addresses, allow_other_workers=False)
    _wait_all(client, futures)
    u, s, v = client.gather(futures)
    seconds = time.perf_counter() - start
    client.cancel(futures)
    return seconds, np.asarray(u), np.asarray(s), np.asarray(v)


def _svd_gap(R: np.ndarray, u: np.ndarray, s: np.ndarray, v: np.ndarray, optimum: float) -> float:
    residual = R - (u * s) @ v
    return relative_gap(float(np.sum(residual * residual)), optimum)


def _fit_method(
    client: Client,
    R: np.ndarray,
    D: np.ndarray,
    cfg: BenchConfig,
    method: str,
    model: str,
    seed: int,
) -> CodedALS:
    kwargs: dict[str, Any] = dict(METHOD_OPTIONS[method])
    if kwargs["mode"] == "coded":
        kwargs["h"] = cfg.h
    return CodedALS(
        n_factors=cfg.d,
        n_workers=cfg.n_workers,
        n_stragglers=cfg.n_stragglers,
        straggler_model=model,
        straggler_delay=cfg.straggler_delay if model != "none" else 0.0,
        max_iter=cfg.max_iter,
        tol=0.0,
        seed=seed,
        **kwargs,
    ).fit(R, client=client, gram=D)


def run_bench(
    quick: bool = False,
    seed: int = 0,
    client: Client | None = None,
) -> dict[str, Any]:
    """Compare coded, uncoded and replicated ALS with ``svd_compressed`` under straggler models.

    On one cluster of W workers and one synthetic R, every ALS method is fitted under each
    straggler model (``none``, ``fixed``, ``random``, ``shifted-exponential``) for a fixed
    number of updates. The optimum of the objective ``||R - U V^T||_F^2`` over rank d is the
    sum of the squared singular values of R beyond the d-th (``scipy.linalg.svd``); the
    relative gap of round i is ``(history_[i]["objective"] - optimum) / optimum`` and the time
    to the target gap is the cumulative round time until the gap is below it.

    Every method starts from R on the workers: R is scattered once in W row blocks (block i on
    worker i), D = R^T R is computed from them on the cluster once (timed; every ALS fit gets
    this D and counts its time, with the fit's shard placement, as *setup*), and
    ``dask.array.linalg.svd_compressed`` runs on the same blocks and workers. Its
    ``n_power_iter`` is the smallest (up to ``max_power_iter``) reaching the target gap with no
    stragglers, and the same value is used under each straggler model, whose delays a worker
    plugin applies to its tasks (see :class:`_DelayPlugin`).

    Parameters
    ----------
    quick : bool
        Small sizes (m = 240, n = 150, d = 20, 4 updates, stragglers 0.05 s late).
    seed : int
        Seed of the data, the initial factors, the stragglers and the random sketch.
    client : distributed.Client or None
        A cluster with at least W workers (the first W in sorted order are used); None starts
        a LocalCluster of W processes on 127.0.0.1.

    Returns
    -------
    dict
        ``runs`` (one per method and straggler model), ``svd_compressed``, ``ratios``,
        ``optimum``, ``config``, ``machine``, ``wall_time``; plain JSON values.
        :func:`dask_coded_als.bench.report.write_report` writes it out.
    """
    import scipy.linalg

    t_start = time.perf_counter()
    cfg = BENCH_QUICK if quick else BENCH_FULL
    R = synthetic_ratings(cfg.m, cfg.n, cfg.rank, cfg.noise, seed)
    singular = scipy.linalg.svd(R, compute_uv=False)
    optimum = float(np.sum(singular[cfg.d :] ** 2))
    svd_search: list[dict[str, Any]] = []
    with using_cluster(client, cfg.n_workers) as (active, _):
        addresses = fit_addresses(active, cfg.n_workers)
        # R in W row blocks, block i on worker i: every method starts from R on the workers.
        X, blocks, place_seconds = _place_rows(active, R, addresses)
        t0 = time.perf_counter()
        D = np.asarray(
            active.compute(X.T @ X, workers=addresses).result(timeout=TASK_TIMEOUT),
            dtype=np.float64,
        )
        gram_seconds = time.perf_counter() - t0
        for method in METHODS:
            options = METHOD_OPTIONS[method]
            coded = options["mode"] == "coded"
            warm_up(active, R, D, cfg.d, cfg.n_workers, cfg.h if coded else None, **options)
        fits: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for _ in range(cfg.repeats):
            for model_name in cfg.straggler_models:
                for method in METHODS:
                    fit = _fit_method(active, R, D, cfg, method, model_name, seed)
                    fits.setdefault((model_name, method), []).append(
                        _summarize_fit(
                            fit, method, model_name, optimum, cfg.target_gap, gram_seconds
                        )
                    )
                    time.sleep(cfg.straggler_delay)  # let sleeping stragglers finish
        runs = [
            _combine_repeats(fits[(model_name, method)])
            for model_name in cfg.straggler_models
            for method in METHODS
        ]

        # svd_compressed: the smallest n_power_iter reaching the target without stragglers,
        # then that n_power_iter under every straggler model, ``repeats`` times.
        chosen = None
        for q in range(cfg.max_power_iter + 1):
            seconds, u, s, v = _svd_compressed_run(active, X, addresses, cfg.d, q, seed)
            gap = _svd_gap(R, u, s, v, optimum)
            svd_search.append(_svd_record("none", q, [seconds], gap, u, s, v))
            if gap < cfg.target_gap:
                chosen = q
                break
        q_used = cfg.max_power_iter if chosen is None else chosen
        fixed = StragglerModel(
            "fixed", cfg.n_workers, cfg.n_stragglers, cfg.straggler_delay, seed=seed
        ).fixed
        svd_seconds: dict[str, list[float]] = {m: [] for m in cfg.straggler_models}
        svd_last: dict[str, tuple] = {}
        if chosen is not None and "none" in svd_seconds:
            svd_seconds["none"].append(svd_search[-1]["seconds"])
            svd_last["none"] = (svd_search[-1]["gap"], u, s, v)
        for _ in range(cfg.repeats):
            for model_name in cfg.straggler_models:
                if len(svd_seconds[model_name]) >= cfg.repeats:
                    continue
                plugin = _DelayPlugin(
                    model_name,
                    cfg.straggler_delay,
                    [addresses[w] for w in fixed],
                    cfg.n_stragglers / cfg.n_workers,
                    seed,
                )
                if model_name != "none":
                    active.register_plugin(plugin, name=_DelayPlugin.name)
                try:
                    seconds, u, s, v = _svd_compressed_run(
                        active, X, addresses, cfg.d, q_used, seed
                    )
                finally:
                    if model_name != "none":
                        active.unregister_worker_plugin(_DelayPlugin.name)
                svd_seconds[model_name].append(seconds)
                svd_last[model_name] = (_svd_gap(R, u, s, v, optimum), u, s, v)
                time.sleep(cfg.straggler_delay)
        svd_runs = [
            _svd_record(m, q_used, svd_seconds[m], *svd_last[m]) for m in cfg.straggler_models
        ]
        active.cancel(blocks)
    result = {
        "experiment": "bench",
        "quick": quick,
        "seed": seed,
        "config": asdict(cfg),
        "machine": machine(),
        "optimum": optimum,
        "singular_values": {
            "d": float(singular[cfg.d - 1]),
            "d+1": float(singular[cfg.d]),
        },
        "place_seconds": place_seconds,
        "gram_seconds": gram_seconds,
        "runs": runs,
        "svd_compressed": {
            "n_power_iter": q_used,
            "reached_target": chosen is not None,
            "bytes_input": int(R.nbytes),
            "search": svd_search,
            "runs": svd_runs,
        },
    }
    result["ratios"] = _bench_ratios(result)
    result["wall_time"] = time.perf_counter() - t_start
    return jsonable(result)


def _svd_record(
    model: str,
    q: int,
    seconds: list[float],
    gap: float,
    u: np.ndarray,
    s: np.ndarray,
    v: np.ndarray,
) -> dict[str, Any]:
    return {
        "straggler_model": model,
        "n_power_iter": q,
        "seconds": median(seconds),
        "seconds_repeats": [float(x) for x in seconds],
        "gap": gap,
        "bytes_received": int(u.nbytes + s.nbytes + v.nbytes),
    }


def _summarize_fit(
    fit: CodedALS, method: str, model: str, optimum: float, target: float, gram_seconds: float
) -> dict[str, Any]:
    history = fit.history_
    times = [float(e["time"]) for e in history]
    gaps = [relative_gap(e["objective"], optimum) for e in history]
    rounds = timed_rounds(history)
    to_gap = time_to_gap(times, gaps, target)
    setup = gram_seconds + fit.timings_.get("scatter_data", 0.0)
    return {
        "method": method,
        "straggler_model": model,
        "time_per_iteration": median([e["time"] for e in rounds]),
        "time_to_gap": to_gap,
        "time_to_gap_with_setup": None if to_gap is None else to_gap + setup,
        "rounds_to_gap": next((i for i, g in enumerate(gaps) if g < target), None),
        "setup_seconds": setup,
        "final_gap": gaps[-1],
        "bytes_sent_per_iteration": median([e["bytes_sent"] for e in rounds]),
        "bytes_received_per_iteration": median([e["bytes_received"] for e in rounds]),
        "cpu_seconds_per_iteration": median([e["cpu_seconds"] for e in rounds]),
        "late_cpu_seconds_per_iteration": median(
            [sum(s["late_cpu_seconds"] for s in e["stages"].values()) for e in rounds]
        ),
        "master_seconds_per_iteration": median([e["master_seconds"] for e in rounds]),
        "round_times": times,
        "gaps": gaps,
        "h": getattr(fit, "h_", None),
    }


def _combine_repeats(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """One record for repeated fits: medians of the times; the curves of the median fit."""
    order = sorted(
        range(len(repeats)),
        key=lambda i: math.inf if repeats[i]["time_to_gap"] is None else repeats[i]["time_to_gap"],
    )
    combined = dict(repeats[order[(len(order) - 1) // 2]])
    combined["time_per_iteration"] = median([r["time_per_iteration"] for r in repeats])
    reached = [r for r in repeats if r["time_to_gap"] is not None]
    if len(reached) == len(repeats):
        combined["time_to_gap"] = median([r["time_to_gap"] for r in repeats])
        combined["time_to_gap_with_setup"] = median([r["time_to_gap_with_setup"] for r in repeats])
    combined["repeats"] = [
        {key: r[key] for key in ("time_per_iteration", "time_to_gap", "setup_seconds")}
        for r in repeats
    ]
    return combined


def _bench_ratios(result: dict) -> dict[str, Any]:
    """Per straggler model: every method against coded (time per iteration, time to gap)."""
    runs = {(r["straggler_model"], r["method"]): r for r in result["runs"]}
    svd = {r["straggler_model"]: r for r in result["svd_compressed"]["runs"]}
    out: dict[str, Any] = {}
    for model in result["config"]["straggler_models"]:
        coded = runs.get((model, "coded"))
        if coded is None:
            continue
        entry = {}
        for method in METHODS:
            run = runs.get((model, method))
            if run is None:
                continue
            entry[method] = {
                "time_per_iteration_vs_coded": ratio(
                    run["time_per_iteration"], coded["time_per_iteration"]
                ),
                "time_to_gap_vs_coded": ratio(run["time_to_gap"], coded["time_to_gap"]),
            }
        svd_run = svd.get(model)
        if svd_run is not None:
            entry["svd_compressed"] = {
                "time_to_gap_vs_coded": ratio(svd_run["seconds"], coded["time_to_gap"]),
                "time_vs_coded_with_setup": ratio(
                    svd_run["seconds"], coded["time_to_gap_with_setup"]
                ),
                "reached_target": svd_run["gap"] < result["config"]["target_gap"],
            }
        out[model] = entry
    return out
