"""The paper's Table I: the time of one coded iteration for every (k, h) cell, beside the
expected-time model of its Appendix A calibrated on this machine."""

from __future__ import annotations

import math
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
from distributed import Client

from dask_coded_als._util import jsonable
from dask_coded_als.bench.common import (
    PAPER_TABLE1,
    TABLE1_FULL,
    TABLE1_QUICK,
    TASK_TIMEOUT,
    Table1Config,
    ensure_workers,
    fit_addresses,
    machine,
    median,
    n_cores,
    n_workers_of,
    rank_d_optimum,
    relative_gap,
    synthetic_ratings,
    table1_cells,
    timed_rounds,
    using_cluster,
    warm_up,
)
from dask_coded_als.coding import theory
from dask_coded_als.coding.codes import ALSCode, NumericalWarning
from dask_coded_als.data.gram import gram
from dask_coded_als.engine import CodedALS
from dask_coded_als.engine.stragglers import StragglerModel
from dask_coded_als.errors import InputError

__all__ = ["calibrate_stage1", "run_table1"]


def _time_stage1(code: ALSCode, shard: np.ndarray, factor: np.ndarray, repeats: int) -> list:
    """Run on a worker: one untimed and ``repeats`` timed stage-1 products."""
    code.stage1(shard, factor)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        code.stage1(shard, factor)
        times.append(time.perf_counter() - start)
    return times


def calibrate_stage1(
    client: Client,
    D: np.ndarray,
    n_factors: int,
    hs: Sequence[int],
    n_stragglers: int,
    repeats: int,
    seed: int = 0,
) -> dict[int, dict[str, float]]:
    """Time the stage-1 task of coded ALS alone on one worker, for every h.

    The task is the one the engine runs (``ALSCode.stage1`` on worker 0's coded shard of D and
    its factor shard), timed inside the worker while every other worker is idle, so it has a
    core to itself: this is the per-worker time of the model's "one worker per core" setting.

    Parameters
    ----------
    client : distributed.Client
        The cluster; the first worker in sorted order runs the tasks.
    D : ndarray
        The l x l data matrix.
    n_factors : int
        d.
    hs : sequence of int
        Block counts to time.
    n_stragglers : int
        s; the code of each h is built for W = h^2 + h - 1 + s workers.
    repeats : int
        Timed runs per h (after one untimed run).
    seed : int
        Seed of the factor.

    Returns
    -------
    dict of int to dict
        Per h: ``median`` and ``std`` seconds, ``n_ops`` (l_pad^2 d / h^2 unit operations of the
        model), ``size`` (l padded as the engine pads it), ``times``.
    """
    from dask_coded_als import als

    worker = fit_addresses(client, 1)
    out = {}
    for h in hs:
        n_workers = theory.recovery_threshold(h) + n_stragglers
        code = ALSCode(h, n_workers)
        size = code.padded_size(D.shape[0])
        pad = size - D.shape[0]
        Dp = np.pad(D, ((0, pad), (0, pad))) if pad else D
        B = als.initial_factor(size, n_factors, seed)
        shard = code.encode_data(Dp, [0])[0]
        factor = code.encode_factor(B)[0]
        shard_f, factor_f = client.scatter([shard, factor], workers=worker, hash=False)
        future = client.submit(
            _time_stage1, code, shard_f, factor_f, repeats, workers=worker, pure=False
        )
        times = future.result(timeout=TASK_TIMEOUT)
        client.cancel([shard_f, factor_f, future])
        out[h] = {
            "median": median(times),
            "std": _robust_std(times),
            "n_ops": size * size * n_factors / (h * h),
            "size": size,
            "times": [float(t) for t in times],
        }
    return out


def _robust_std(times: Sequence[float]) -> float:
    """1.4826 x the median absolute deviation: the standard deviation of normal data, without
    letting one run that the operating system interrupted dominate it."""
    x = np.asarray(times, dtype=np.float64)
    return float(1.4826 * np.median(np.abs(x - np.median(x)))) if x.size > 1 else 0.0


def _model_parameters(calibration: dict[int, dict[str, float]]) -> dict[str, float]:
    """op_mean and op_std from the largest calibrated task (the smallest h).

    The model says a task of N unit operations takes N op_mean on average with standard
    deviation sqrt(N) op_std; the largest task has the least fixed overhead per operation.
    """
    h_ref = min(calibration)
    ref = calibration[h_ref]
    return {
        "h_ref": h_ref,
        "op_mean": ref["median"] / ref["n_ops"],
        "op_std": ref["std"] / math.sqrt(ref["n_ops"]),
    }


def _shared_core_estimate(
    h: int, n_workers: int, size: int, d: int, op_mean: float, cores: int
) -> float:
    """Seconds of an iteration if all W workers' stage-1 tasks share ``cores`` cores (total
    work / cores): an upper bound, since the late ones are stopped before they finish."""
    n_ops = size * size * d / h**2
    return n_workers * n_ops * op_mean / cores


def _run_cell(
    client: Client,
    R: np.ndarray,
    D: np.ndarray,
    cfg: Table1Config,
    k: int,
    h: int,
    seed: int,
    optimum: float,
) -> dict[str, Any]:
    """One coded fit on W = k + s workers with s fixed stragglers; medians of its rounds."""
    n_workers = k + cfg.n_stragglers
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NumericalWarning)
        model = _fit_cell(client, R, D, cfg, n_workers, h, seed)
    worst = [
        float(match.group(1))
        for w in caught
        if issubclass(w.category, NumericalWarning)
        and (match := re.search(r"relative error near ([0-9.e+-]+)", str(w.message)))
    ]
    for w in caught:
        if not issubclass(w.category, NumericalWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    summary = _summarize_cell(model, cfg, n_workers, seed)
    summary["final_gap"] = relative_gap(model.history_[-1]["objective"], optimum)
    summary["decode_warnings"] = len(worst)
    summary["worst_expected_decode_error"] = max(worst, default=None)
    return summary


def _fit_cell(
    client: Client,
    R: np.ndarray,
    D: np.ndarray,
    cfg: Table1Config,
    n_workers: int,
    h: int,
    seed: int,
) -> CodedALS:
    return CodedALS(
        n_factors=cfg.d,
        n_workers=n_workers,
        h=h,
        n_stragglers=cfg.n_stragglers,
        straggler_model="fixed",
        straggler_delay=cfg.straggler_delay,
        max_iter=cfg.max_iter,
        tol=0.0,
        seed=seed,
    ).fit(R, client=client, gram=D)


def _summarize_cell(model: CodedALS, cfg: Table1Config, n_workers: int, seed: int) -> dict:
    """Medians over the timed rounds of one cell's fit."""
    rounds = timed_rounds(model.history_)
    stragglers = set(
        StragglerModel("fixed", n_workers, cfg.n_stragglers, cfg.straggler_delay, seed=seed).fixed
    )
    stage_seconds = {"E": median([r["stages"]["E"]["seconds"] for r in rounds])}
    stage_compute = {"E": median([r["stages"]["E"]["compute"] for r in rounds])}
    straggler_answers = sum(
        len(stragglers & set(stage["used"])) for r in rounds for stage in r["stages"].values()
    )
    return {
        "time": median([r["time"] for r in rounds]),
        "compute": stage_compute["E"],
        "stage_seconds": stage_seconds,
        "stage_compute": stage_compute,
        "master_seconds": median([r["master_seconds"] for r in rounds]),
        "cpu_seconds": median([r["cpu_seconds"] for r in rounds]),
        "bytes_sent": median([r["bytes_sent"] for r in rounds]),
        "bytes_received": median([r["bytes_received"] for r in rounds]),
        "rounds_timed": len(rounds),
        "straggler_answers_used": straggler_answers,
    }


def run_table1(
    quick: bool = False,
    seed: int = 0,
    client: Client | None = None,
) -> dict[str, Any]:
    """Measure the paper's Table I on a LocalCluster and set the Appendix-A model beside it.

    For every cell (k, h) with h^2 + h - 1 <= k a coded fit runs on W = k + s worker processes
    (s = 2 fixed stragglers, late by ``straggler_delay`` seconds in every task) with D passed
    in precomputed. Per cell: the median time of an iteration at the master, the median
    compute time of the workers' stage-1 task inside the cluster, the stage-1 task timed alone
    on one worker, the Appendix-A expected iteration time (one core per worker) and the
    total-work estimate for the cores of this machine.

    The model is calibrated once: op_mean = (isolated stage-1 seconds) / (l^2 d / h^2) and
    op_std = (their robust standard deviation) / sqrt(l^2 d / h^2), both at the smallest h (the
    largest task). Each task is one worker's work per the paper's eq. (41), so the model
    predicts the per-worker time on a dedicated core.

    Parameters
    ----------
    quick : bool
        Small sizes (m = 240, n = 150, d = 20, 2 updates, k in {10, 20}) for a smoke run.
    seed : int
        Seed of the data, the initial factor and the stragglers.
    client : distributed.Client or None
        A cluster with at least max(k) + s workers; None starts a LocalCluster on 127.0.0.1
        and grows it from min(k) + s to max(k) + s workers as k grows, so every cell runs with
        exactly W = k + s processes.

    Returns
    -------
    dict
        ``cells`` (one dict per cell: ``k``, ``h``, ``W``, ``K``, ``time``, ``compute``,
        ``isolated``, ``model``, ``model_stage1``, ``shared_estimate``, ``paper``, ...),
        ``calibration``, ``model_parameters``, ``config``, ``machine``, ``wall_time``; plain
        JSON values. :func:`dask_coded_als.bench.report.write_report` writes it out.
    """
    t_start = time.perf_counter()
    cfg = TABLE1_QUICK if quick else TABLE1_FULL
    cells = table1_cells(cfg.ks, cfg.hs)
    if not cells:
        raise InputError("no (k, h) cell satisfies h^2 + h - 1 <= k")
    hs = sorted({h for _, h in cells})
    R = synthetic_ratings(cfg.m, cfg.n, cfg.rank, cfg.noise, seed)
    D = gram(R)[0]
    optimum = rank_d_optimum(R, cfg.d)
    cores = n_cores()
    first_w = min(k for k, _ in cells) + cfg.n_stragglers
    last_w = max(k for k, _ in cells) + cfg.n_stragglers
    results = []
    with using_cluster(client, first_w if client is None else last_w) as (active, cluster):
        calibration = calibrate_stage1(
            active, D, cfg.d, hs, cfg.n_stragglers, cfg.calibration_repeats, seed
        )
        params = _model_parameters(calibration)
        warm: set[int] = set()
        for k, h in cells:
            n_workers = k + cfg.n_stragglers
            ensure_workers(active, cluster, n_workers)
            if n_workers not in warm:
                # One untimed update on these workers first: the first task on a fresh worker
                # pays for imports and allocations.
                warm_up(active, R, D, cfg.d, n_workers, h)
                warm.add(n_workers)
            measured = _run_cell(active, R, D, cfg, k, h, seed, optimum)
            # Let the stragglers' last sleeping tasks end before the next cell starts.
            time.sleep(cfg.straggler_delay)
            padded = calibration[h]["size"]
            stages = theory.expected_stage_times(
                h,
                n_workers,
                cfg.n_stragglers,
                padded,
                cfg.d,
                params["op_mean"],
                params["op_std"],
            )
            results.append(
                {
                    "k": k,
                    "h": h,
                    "W": n_workers,
                    "K": theory.recovery_threshold(h),
                    **measured,
                    "isolated": calibration[h]["median"],
                    "model": math.fsum(s.expected for s in stages.values()),
                    "model_stage1": stages[1].expected,
                    "shared_estimate": _shared_core_estimate(
                        h, n_workers, padded, cfg.d, params["op_mean"], cores
                    ),
                    "paper": PAPER_TABLE1.get((k, h)) if not quick else None,
                }
            )
        n_processes = n_workers_of(active)
    return jsonable(
        {
            "experiment": "table1",
            "quick": quick,
            "seed": seed,
            "config": asdict(cfg),
            "machine": machine(),
            "cluster": {"own": client is None, "processes_at_end": n_processes},
            "calibration": {str(h): c for h, c in calibration.items()},
            "model_parameters": params,
            "cells": results,
            "wall_time": time.perf_counter() - t_start,
        }
    )
