"""Fault campaign: coded fits while worker processes are SIGKILLed, checked against the
fault-free factors.

Every run is planned from its own seed: the data (a small low-rank matrix), d, s (the stragglers
the code tolerates), the ``kill`` straggler model (s worker processes killed at random moments)
and, in some runs, *extra* kills beyond s, fired from the fit's callback after a random
iteration, with a recovery timeout long enough for the nannies to restart the workers or too
short for it. Every run must end with the factors of :func:`dask_coded_als.fit_als` (same seed,
``tol=0``; relative difference of U V^T below 1e-9) or with a ClusterError, never with other
factors and never hang.

    python pipelines/fault_campaign.py --runs 40 --seed 0 [--workers 8] [--json FILE] [-v]

The tests (tests/test_faults.py) run the same harness at smaller scale.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from distributed import Client

from dask_coded_als import CodedALS, fit_als
from dask_coded_als.coding import theory
from dask_coded_als.engine import local_cluster
from dask_coded_als.engine.cluster import worker_addresses
from dask_coded_als.errors import ClusterError

#: Relative difference of U V^T below which a run counts as identical to the fault-free fit.
IDENTICAL = 1e-9
#: identical: the fault-free factors; ClusterError: the fit gave up with the error it promises;
#: wrong: other factors; error: any other exception.
OUTCOMES = ("identical", "ClusterError", "wrong", "error")


@dataclass(frozen=True)
class Plan:
    """One run of a campaign, drawn from its seed.

    Attributes
    ----------
    seed : int
        Seeds the data, the initial factor and the kill schedule.
    m, n, d : int
        Shape of R and the latent dimension.
    n_workers, n_stragglers : int
        W and s.
    max_iter : int
        Updates of the fit (``tol=0``: exactly this many).
    extra_kills : tuple of int
        Workers (indices 0..W-1 of the fit) killed from the callback, on top of the s of the
        straggler model; they may include workers the model kills too.
    extra_after : int
        The iteration after which the extra kills fire.
    recovery_timeout : float
        Seconds the fit waits for replacement workers.
    """

    seed: int
    m: int
    n: int
    d: int
    n_workers: int
    n_stragglers: int
    max_iter: int
    extra_kills: tuple[int, ...]
    extra_after: int
    recovery_timeout: float


@dataclass
class Result:
    """What one run did and how it ended.

    Attributes
    ----------
    plan : Plan
    outcome : str
        One of :data:`OUTCOMES`.
    kills : int
        Worker processes killed (by the straggler model and by the callback).
    recoveries : int
        Shards placed again on another worker process.
    gap : float or None
        Relative difference of U V^T from the fault-free fit (None without factors).
    seconds : float
        Wall time of the fit.
    error : str
        The exception's message, if any.
    workers_after : int
        Workers the scheduler listed right after the fit.
    nannies_restarted_before : int
        Nannies the LocalCluster had lost (see :func:`heal`) and that were started again
        before this run.
    traceback : str
        The whole traceback of an ``error`` outcome (in the JSON output, not the table).
    """

    plan: Plan
    outcome: str
    kills: int
    recoveries: int
    gap: float | None
    seconds: float
    error: str = ""
    workers_after: int = -1
    nannies_restarted_before: int = 0
    traceback: str = ""


def plan_run(
    seed: int,
    n_workers: int = 8,
    extra_kills: bool | None = None,
    recovery_timeout: float | None = None,
) -> Plan:
    """Draw a run from ``seed``.

    Parameters
    ----------
    seed : int
    n_workers : int
        W of the cluster.
    extra_kills : bool or None
        Force (True) or forbid (False) kills beyond s; None draws it (one run in two).
    recovery_timeout : float or None
        None draws 20 s (enough for restarts) in three runs of four, else 0.5 s.

    Returns
    -------
    Plan
    """
    rng = np.random.default_rng([seed, 20240601])
    s = int(rng.integers(1, min(4, n_workers)))
    if extra_kills is None:
        extra_kills = bool(rng.integers(2))
    max_iter = int(rng.integers(3, 6))
    K = theory.recovery_threshold(theory.best_h(n_workers, s))
    # Enough extra kills that fewer than K workers (or none at all) may be left.
    extra = (
        int(rng.integers(max(1, n_workers - K + 1 - s), n_workers - s + 1)) if extra_kills else 0
    )
    victims = sorted(int(w) for w in rng.choice(n_workers, extra, replace=False))
    if recovery_timeout is None:
        recovery_timeout = 20.0 if rng.random() < 0.75 else 0.5
    return Plan(
        seed=seed,
        m=int(rng.integers(30, 60)),
        n=int(rng.integers(20, 40)),
        d=int(rng.integers(2, 5)),
        n_workers=n_workers,
        n_stragglers=s,
        max_iter=max_iter,
        extra_kills=tuple(victims),
        extra_after=int(rng.integers(0, max_iter)),
        recovery_timeout=float(recovery_timeout),
    )


def data(plan: Plan) -> np.ndarray:
    """A rank-4 matrix plus a little noise, from the plan's seed."""
    rng = np.random.default_rng(plan.seed)
    low = rng.standard_normal((plan.m, 4)) @ rng.standard_normal((4, plan.n))
    return low + 1e-2 * rng.standard_normal((plan.m, plan.n))


def kill_local_workers(addresses: list[str]) -> list[str]:
    """SIGKILL the worker processes (children of this process) listening on ``addresses``.

    The processes are found by their listening port, without asking the cluster: a request to a
    worker that has just died can wait for distributed's connect timeout (30 s).

    Returns
    -------
    list of str
        The addresses whose process was found and killed (the others were gone already).
    """
    ports = {}
    for address in addresses:
        host_port = address.split("://", 1)[-1]
        ports[int(host_port.rsplit(":", 1)[1])] = address
    killed = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            listening = {c.laddr.port for c in child.net_connections("tcp") if c.status == "LISTEN"}
            for port in listening & set(ports):
                child.send_signal(signal.SIGKILL)
                killed.append(ports[port])
                break
    return killed


def _product_gap(model: CodedALS, reference) -> float:
    P = model.user_factors_ @ model.item_factors_.T
    Q = reference.user_factors @ reference.item_factors.T
    return float(np.linalg.norm(P - Q) / np.linalg.norm(Q))


def settle_kills(timeout: float = 60.0) -> None:
    """Wait (bounded) until the kills the engine scheduled have been delivered.

    The ``kill`` straggler model fires each kill from a ``threading.Timer`` up to 0.05 s after
    its stage starts, through the scheduler; a fit can end before the kill lands, which would
    then hit the next fit.
    """
    deadline = time.monotonic() + timeout
    while any(isinstance(t, threading.Timer) and t.is_alive() for t in threading.enumerate()):
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    time.sleep(0.2)  # for the scheduler to notice the last death


def heal(client: Client, n_workers: int, cluster: Any = None, timeout: float = 120.0) -> int:
    """Wait (bounded) until the cluster has ``n_workers`` workers, restarting lost ones.

    A LocalCluster closes a nanny for good when no worker of its name has registered
    ``distributed.deploy.lost-worker-timeout`` (15 s) after a death of that worker: a restart
    slower than that, or a second death of the same worker shortly before the 15 s of an
    earlier one are over, shrinks the cluster. ``cluster.scale`` to its own size starts the
    missing nannies again.

    Parameters
    ----------
    client : distributed.Client
    n_workers : int
    cluster : SpecCluster or None
        The cluster to repair; default ``client.cluster`` (None: only wait).
    timeout : float
        Seconds to wait at most.

    Returns
    -------
    int
        Nannies that had to be started again.

    Raises
    ------
    TimeoutError
        Fewer than ``n_workers`` workers after ``timeout`` seconds.
    """
    cluster = cluster if cluster is not None else getattr(client, "cluster", None)
    deadline = time.monotonic() + timeout
    restarted: set = set()
    while True:
        if len(worker_addresses(client)) >= n_workers:
            return len(restarted)
        if time.monotonic() > deadline:
            have = len(worker_addresses(client))
            raise TimeoutError(f"{have} of {n_workers} workers after {timeout:g} s")
        missing = set(cluster.worker_spec) - set(cluster.workers) if cluster is not None else ()
        if missing:
            restarted |= missing
            cluster.scale(len(cluster.worker_spec))
        time.sleep(0.25)


def run_one(
    client: Client,
    plan: Plan,
    deadline: float = 120.0,
    cluster: Any = None,
    cluster_size: int | None = None,
) -> Result:
    """Run one planned fit on ``client``'s cluster and classify its end.

    The fit runs in a thread so that a hang becomes a failure (``RuntimeError``) after
    ``deadline`` seconds instead of blocking the campaign. Before the fit, all ``n_workers``
    workers must be back (:func:`heal`).

    Parameters
    ----------
    client : distributed.Client
        A client of a LocalCluster started by this process (the extra kills find the worker
        processes among this process's children). Its ``timeout`` bounds how long a scatter to
        a worker that has just died may try to connect; keep it short (e.g. ``"10s"``).
    plan : Plan
    deadline : float
        Seconds the fit may take at most.
    cluster : LocalCluster or None
        The cluster, to restart lost workers; default ``client.cluster``.
    cluster_size : int or None
        Workers the cluster must have before the fit (default ``plan.n_workers``); with more
        than the fit uses, the spare ones take the shards of the dead at once.

    Returns
    -------
    Result
        ``outcome`` is one of :data:`OUTCOMES`.
    """
    settle_kills()
    healed = heal(client, cluster_size or plan.n_workers, cluster)
    R = data(plan)
    reference = fit_als(R, plan.d, max_iter=plan.max_iter, tol=0, seed=plan.seed)
    model = CodedALS(
        plan.d,
        n_workers=plan.n_workers,
        n_stragglers=plan.n_stragglers,
        straggler_model="kill",
        max_iter=plan.max_iter,
        tol=0,
        seed=plan.seed,
        stage_timeout=30.0,
        recovery_timeout=plan.recovery_timeout,
    )
    fired: list[str] = []
    done = []

    def kill_more(entry: dict) -> None:
        if plan.extra_kills and not done and entry["iteration"] == plan.extra_after:
            done.append(True)
            fired.extend(kill_local_workers([model.workers_[w] for w in plan.extra_kills]))

    box: dict = {}

    def target() -> None:
        try:
            model.fit(R, client=client, callback=kill_more)
        except BaseException as exc:  # classified below
            box["error"] = exc

    start = time.perf_counter()
    thread = threading.Thread(target=target, name=f"fault-campaign-{plan.seed}", daemon=True)
    thread.start()
    thread.join(deadline)
    seconds = time.perf_counter() - start
    if thread.is_alive():
        raise RuntimeError(f"run {plan.seed}: the fit did not end within {deadline:g} s")
    counts = dict(
        kills=len(getattr(model, "kills_", [])) + len(fired),
        recoveries=int(getattr(model, "recoveries_", 0)),
        seconds=seconds,
        workers_after=len(worker_addresses(client)),
        nannies_restarted_before=healed,
    )
    error = box.get("error")
    if isinstance(error, ClusterError):
        return Result(plan, "ClusterError", gap=None, error=str(error), **counts)
    if error is not None:
        # where the package called into what failed
        frames = traceback.extract_tb(error.__traceback__)
        ours = [f for f in frames if "dask_coded_als" in f.filename] or frames
        where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}"
        text = f"{type(error).__name__} at {where}: {error}"
        trace = "".join(traceback.format_exception(error))
        return Result(plan, "error", gap=None, error=text, traceback=trace, **counts)
    gap = _product_gap(model, reference)
    outcome = "identical" if gap < IDENTICAL else "wrong"
    return Result(plan, outcome, gap=gap, **counts)


def campaign(
    client: Client,
    runs: int,
    seed: int,
    n_workers: int = 8,
    progress: Callable[[int, Result], None] | None = None,
    cluster: Any = None,
    **plan_options: Any,
) -> list[Result]:
    """``runs`` runs planned from the seeds ``seed, seed + 1, ...`` (:func:`plan_run` takes
    ``plan_options``); ``progress(i, result)`` is called after each. The cluster is whole again
    at the end (:func:`heal`)."""
    results = []
    for i in range(runs):
        plan = plan_run(seed + i, n_workers, **plan_options)
        results.append(run_one(client, plan, cluster=cluster))
        if progress is not None:
            progress(i, results[-1])
    settle_kills()
    heal(client, n_workers, cluster)
    return results


def summary(results: list[Result]) -> dict:
    """Runs, kills fired and the count of every outcome."""
    counts = Counter(r.outcome for r in results)
    seconds = [r.seconds for r in results]
    return {
        "runs": len(results),
        "kills": sum(r.kills for r in results),
        "runs_beyond_s": sum(1 for r in results if r.plan.extra_kills),
        "recoveries": sum(r.recoveries for r in results),
        **{outcome: counts.get(outcome, 0) for outcome in OUTCOMES},
        "median_seconds": float(np.median(seconds)) if seconds else 0.0,
        "max_seconds": max(seconds, default=0.0),
        "nannies_restarted": sum(r.nannies_restarted_before for r in results),
    }


def table(results: list[Result]) -> str:
    """A Markdown table of the runs and the summary."""
    lines = [
        "| seed | m x n, d | s | iters | extra kills (after it.) | recovery timeout | kills "
        "| recoveries | outcome | gap | seconds | workers after | error |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        p = r.plan
        extra = f"{len(p.extra_kills)} (after {p.extra_after})" if p.extra_kills else "0"
        gap = "" if r.gap is None else f"{r.gap:.1e}"
        lines.append(
            f"| {p.seed} | {p.m} x {p.n}, {p.d} | {p.n_stragglers} | {p.max_iter} | {extra} "
            f"| {p.recovery_timeout:g} s | {r.kills} | {r.recoveries} | {r.outcome} | {gap} "
            f"| {r.seconds:.1f} | {r.workers_after} | {r.error[:120]} |"
        )
    total = summary(results)
    lines += [
        "",
        "| runs | kills | runs with kills beyond s | recoveries | identical | ClusterError "
        "| wrong | other error | median / max seconds | lost nannies restarted |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {total['runs']} | {total['kills']} | {total['runs_beyond_s']} "
        f"| {total['recoveries']} | {total['identical']} | {total['ClusterError']} "
        f"| {total['wrong']} | {total['error']} "
        f"| {total['median_seconds']:.1f} / {total['max_seconds']:.1f} "
        f"| {total['nannies_restarted']} |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="the engine's warnings")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    logging.getLogger("dask_coded_als").setLevel(
        logging.WARNING if args.verbose else logging.CRITICAL
    )
    start = time.perf_counter()

    def progress(i: int, result: Result) -> None:
        print(
            f"run {i + 1}/{args.runs} (seed {result.plan.seed}): {result.outcome} "
            f"{result.error[:100]}",
            file=sys.stderr,
            flush=True,
        )

    cluster = local_cluster(args.workers)
    try:
        # The client's timeout bounds a scatter's attempts to reach a worker that has just died.
        with Client(cluster, timeout="10s") as client:
            client.wait_for_workers(args.workers, timeout=120)
            results = campaign(client, args.runs, args.seed, args.workers, progress, cluster)
    finally:
        try:
            cluster.close(timeout=60)
        except Exception as exc:  # the results stand; say what the cluster did
            print(f"closing the LocalCluster failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    print(table(results))
    print(f"\nwall time {time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"summary": summary(results), "runs": [asdict(r) for r in results]}, out)
    total = summary(results)
    return 1 if total["wrong"] or total["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
