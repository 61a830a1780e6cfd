"""The master: coded ALS on a dask.distributed cluster (the paper's Sec. III-C).

Every stage submits one task per worker, pinned to the worker that holds its shard, and goes on
as soon as the stage's threshold of results is in, cancelling the rest. The engine knows Dask and
the codes; it knows nothing of file formats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from typing import Any

import numpy as np
import scipy.sparse as sp
from distributed import Client, Future, LocalCluster, as_completed
from distributed.client import FutureCancelledError
from distributed.comm.core import CommClosedError
from distributed.scheduler import KilledWorker

from dask_coded_als import als, theory
from dask_coded_als._validation import check_int
from dask_coded_als.codes import ALSCode
from dask_coded_als.errors import ClusterError, InputError
from dask_coded_als.stragglers import StragglerModel, TaskDelay

__all__ = ["CodedALS", "MODES", "local_cluster"]

logger = logging.getLogger(__name__)

MODES = ("coded", "uncoded", "replication")
#: The cheap stages keep collecting (up to the iteration's threshold) while a decode from what
#: has arrived would be less accurate than this.
DECODE_ERROR_TARGET = 1e-12
#: Seconds a scatter to one worker may take before that worker counts as lost.
SCATTER_TIMEOUT = 10.0


def local_cluster(n_workers: int, **kwargs: Any) -> LocalCluster:
    """A LocalCluster of worker processes with one thread each, bound to 127.0.0.1, no dashboard."""
    options = dict(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        memory_limit=0,
        host="127.0.0.1",
        dashboard_address=None,
        worker_dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    options.update(kwargs)
    with warnings.catch_warnings():
        # The scheduler's HTTP endpoint falls back to a free loopback port when 8787 is taken.
        warnings.filterwarnings("ignore", message="Port .* is already in use")
        return LocalCluster(**options)


# ---- worker side ------------------------------------------------------------------------------


def _run_task(fn: Callable[..., np.ndarray], delay: TaskDelay, *args: Any) -> tuple[Any, float]:
    """Run one stage task; stragglers sleep here so the master measures real waiting."""
    start = time.perf_counter()
    out = fn(*args)
    compute = time.perf_counter() - start
    pause = delay.seconds + delay.slowdown * compute
    if pause > 0:
        time.sleep(pause)
    return out, compute


def _row_block_product(block: np.ndarray, B: np.ndarray) -> np.ndarray:
    return block @ B


def _block_gram(block: Any, transposed: bool) -> np.ndarray:
    product = block @ block.T if transposed else block.T @ block
    return product.toarray() if sp.issparse(product) else np.asarray(product)


def _add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a + b


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


# ---- master side ------------------------------------------------------------------------------


class _NotEnoughResults(Exception):
    """A stage could not collect its threshold from the workers alive."""


# What a worker dying under a scatter, a task or a gather looks like from the master.
_WORKER_LOST = (FutureCancelledError, CancelledError, KilledWorker, CommClosedError, OSError)


def _trace(D: Any, block: int = 2048) -> float:
    """trace(D), reading only the diagonal blocks of a D stored on disk."""
    if isinstance(D, np.ndarray):
        return float(np.trace(D))
    return float(
        sum(
            np.trace(np.asarray(D[a : a + block, a : a + block]))
            for a in range(0, D.shape[0], block)
        )
    )


def _nbytes(x: Any) -> int:
    return int(getattr(x, "nbytes", 0))


class CodedALS:
    """Coded alternating least squares on a Dask cluster, tolerant of stragglers and faults.

    Factorizes R (m x n) into U (m x d) and V (n x d) minimizing ``||R - U V^T||_F^2`` (plus an
    optional ridge term) with the one-factor ALS update of the paper, eq. (12), where the data
    matrix D = R^T R (or R R^T) is stored on the workers in coded form.

    Parameters
    ----------
    n_factors : int
        d, the latent dimension.
    n_workers : int, default 8
        W, workers used (the cluster must have at least this many).
    h : int or None
        Block rows/columns of D; None picks the largest h that tolerates ``n_stragglers``
        (:func:`dask_coded_als.theory.best_h`).
    n_stragglers : int, default 0
        s, how many slow or dead workers every stage must tolerate; also how many workers the
        straggler model slows down or kills.
    mode : {"coded", "uncoded", "replication"}
        ``coded``: the paper's scheme. ``uncoded``: D split by rows over all W workers, every
        iteration waits for every worker. ``replication``: D split by rows into
        ``W // (s + 1)`` blocks, each on ``s + 1`` or more workers; the first copy wins.
    straggler_model : {"none", "fixed", "random", "shifted-exponential", "kill"}
        See :class:`dask_coded_als.stragglers.StragglerModel`.
    straggler_delay : float
        Seconds of delay (or mean slowdown for ``shifted-exponential``).
    points : {"circle", "real"} or None
        Evaluation points of the code (default: the unit circle, stable).
    max_iter : int, default 50
        Maximum number of updates of the factor.
    tol : float, default 1e-9
        Stop when the relative change of the objective falls below it.
    regularization : float, default 0.0
        Ridge weight on ``||U||^2 + ||V||^2``.
    seed : int or None
        Seeds the initial factor and the straggler model.
    stage_timeout : float, default 120.0
        Seconds a stage may wait for its results before the fit stops with an error.
    recovery_timeout : float, default 30.0
        Seconds to wait for replacement workers when fewer than the threshold are alive.

    Attributes
    ----------
    user_factors_, item_factors_ : ndarray
        U (m x d) and V (n x d).
    history_ : list of dict
        One entry per round: ``iteration``, ``time``, ``objective`` (of the factor entering the
        round), ``master_seconds`` (encode + decode), ``bytes_sent``, ``bytes_received``, and
        ``stages``: per stage its ``seconds``, the ``used`` workers, the ``late`` ones, the
        ``failed`` ones and the workers' median ``compute`` seconds.
    h_ : int
        The h used (coded mode).
    n_iter_ : int
        Updates performed.
    converged_ : bool
        Whether the tolerance was reached.

    Examples
    --------
    >>> import numpy as np
    >>> from dask_coded_als import CodedALS
    >>> R = np.random.default_rng(0).standard_normal((60, 40))
    >>> model = CodedALS(n_factors=4, n_workers=7, n_stragglers=1).fit(R)  # doctest: +SKIP
    >>> model.user_factors_.shape, model.item_factors_.shape  # doctest: +SKIP
    ((60, 4), (40, 4))
    """

    def __init__(
        self,
        n_factors: int,
        n_workers: int = 8,
        h: int | None = None,
        n_stragglers: int = 0,
        mode: str = "coded",
        straggler_model: str = "none",
        straggler_delay: float = 0.0,
        points: str | None = None,
        max_iter: int = 50,
        tol: float = 1e-9,
        regularization: float = 0.0,
        seed: int | None = None,
        stage_timeout: float = 120.0,
        recovery_timeout: float = 30.0,
    ):
        self.n_factors = n_factors
        self.n_workers = n_workers
        self.h = h
        self.n_stragglers = n_stragglers
        self.mode = mode
        self.straggler_model = straggler_model
        self.straggler_delay = straggler_delay
        self.points = points
        self.max_iter = max_iter
        self.tol = tol
        self.regularization = regularization
        self.seed = seed
        self.stage_timeout = stage_timeout
        self.recovery_timeout = recovery_timeout

    # -- validation -------------------------------------------------------------------------
    def _validate(self, shape: tuple[int, int]) -> None:
        m, n = shape
        check_int(self.n_factors, "n_factors", 1)
        if self.n_factors > min(m, n):
            raise InputError(
                f"n_factors={self.n_factors} exceeds min(m, n) = {min(m, n)} of the {m} x {n} data"
            )
        check_int(self.n_workers, "n_workers", 1)
        check_int(self.n_stragglers, "n_stragglers", 0)
        if self.n_stragglers >= self.n_workers:
            raise InputError(
                f"n_stragglers={self.n_stragglers} must be smaller than n_workers={self.n_workers}"
            )
        check_int(self.max_iter, "max_iter", 0)
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {self.mode!r}")
        for name in ("tol", "regularization", "straggler_delay", "stage_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float, np.floating)) or not np.isfinite(value):
                raise InputError(f"{name} must be a finite number, got {value!r}")
            if value < 0:
                raise InputError(f"{name} must be >= 0, got {value}")
        if self.mode == "coded":
            if self.h is None:
                try:
                    self.h_ = theory.best_h(self.n_workers, self.n_stragglers)
                except ValueError as exc:
                    raise InputError(str(exc)) from None
            else:
                check_int(self.h, "h", 1)
                needed = theory.recovery_threshold(self.h) + self.n_stragglers
                if needed > self.n_workers:
                    raise InputError(
                        f"h={self.h} needs {theory.recovery_threshold(self.h)} answering workers; "
                        f"with n_stragglers={self.n_stragglers} that is {needed} > "
                        f"n_workers={self.n_workers} (largest h possible: "
                        f"{self._largest_h_or_none()})"
                    )
                self.h_ = int(self.h)

    def _largest_h_or_none(self) -> int | None:
        try:
            return theory.best_h(self.n_workers, self.n_stragglers)
        except ValueError:
            return None

    # -- public API ---------------------------------------------------------------------------
    def fit(
        self,
        R: Any,
        client: Client | None = None,
        gram: np.ndarray | None = None,
        callback: Callable[[dict], None] | None = None,
        checkpoint: Callable[[dict], None] | None = None,
        resume: dict | None = None,
    ) -> CodedALS:
        """Factorize R.

        Parameters
        ----------
        R : ndarray, scipy.sparse matrix or dask array, shape (m, n)
            Ratings; missing entries are 0.
        client : distributed.Client or None
            The cluster to run on. None starts a LocalCluster of ``n_workers`` processes on
            127.0.0.1 and closes it afterwards.
        gram : ndarray, array-like or None
            D = R^T R (m >= n) or R R^T (m < n), if already computed; otherwise it is computed
            on the cluster. An array that reads from disk on slicing (e.g. a ``zarr.Array``) is
            held in memory only while the shards are placed, and read again only to rebuild a
            lost worker's shard.
        callback : callable or None
            Called with each round's history entry as soon as the round ends.
        checkpoint : callable or None
            Called after every update with the fit's state ``{"B", "iteration", "history"}``
            (B without padding); persisting it is the caller's business.
        resume : dict or None
            A state given to ``checkpoint`` by an earlier fit with the same parameters and
            data: the fit continues from it and ends with the same factors as one run without
            interruption.

        Returns
        -------
        self
        """
        R = self._check_data(R)
        m, n = R.shape
        self._validate((m, n))
        self.transposed_ = m < n
        size = min(m, n)
        if gram is not None:
            if not hasattr(gram, "shape") or not hasattr(gram, "__getitem__"):
                gram = np.asarray(gram, dtype=np.float64)
            if tuple(gram.shape) != (size, size):
                raise InputError(f"gram has shape {gram.shape}, expected {(size, size)}")
        with self._cluster(client) as active:
            self._client = active
            try:
                self._fit(R, gram, callback, checkpoint, self._check_resume(resume, size))
            finally:
                self._client = None
        return self

    # -- helpers ------------------------------------------------------------------------------
    def _check_resume(self, resume: dict | None, size: int) -> dict | None:
        if resume is None:
            return None
        try:
            B = np.asarray(resume["B"], dtype=np.float64)
            iteration = int(resume["iteration"])
            history = list(resume["history"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"the state to resume from is incomplete ({exc})") from None
        if B.shape != (size, self.n_factors) or not np.all(np.isfinite(B)):
            raise InputError(
                f"the state to resume from has a factor of shape {B.shape}, expected "
                f"{(size, self.n_factors)} and finite"
            )
        if not 0 <= iteration <= self.max_iter or len(history) != iteration:
            raise InputError(
                f"the state to resume from is at iteration {iteration} with {len(history)} "
                f"history entries; max_iter is {self.max_iter}"
            )
        return {"B": B, "iteration": iteration, "history": history}

    @staticmethod
    def _check_data(R: Any) -> Any:
        if sp.issparse(R):
            R = sp.csr_matrix(R, dtype=np.float64)
            values = R.data
        elif hasattr(R, "dask"):
            return R
        else:
            R = np.asarray(R, dtype=np.float64)
            values = R
        if R.ndim != 2:
            raise InputError(f"R must be a 2-D matrix, got {R.ndim} dimensions")
        if 0 in R.shape:
            raise InputError(f"R must not be empty, got shape {R.shape}")
        if not np.all(np.isfinite(values)):
            raise InputError("R contains NaN or infinite values")
        return R

    @contextlib.contextmanager
    def _cluster(self, client: Client | None) -> Iterator[Client]:
        if client is not None:
            yield client
            return
        with local_cluster(self.n_workers) as cluster, Client(cluster, timeout="60s") as own:
            yield own

    def _workers(self) -> list[str]:
        """Addresses of the workers to use, waiting (bounded) until enough have joined."""
        try:
            self._client.wait_for_workers(self.n_workers, timeout=self.recovery_timeout)
        except TimeoutError:
            have = len(self._alive_addresses())
            raise ClusterError(
                f"the cluster has {have} workers, the fit needs n_workers={self.n_workers}"
            ) from None
        return sorted(self._alive_addresses())[: self.n_workers]

    def _alive_addresses(self) -> set[str]:
        info = self._client.scheduler_info(n_workers=-1)
        return set(info["workers"])

    def _scatter(self, data: np.ndarray, worker: int) -> Future:
        self._bytes_sent += _nbytes(data)
        return self._client.scatter(
            data,
            workers=[self._address[worker]],
            direct=True,
            hash=False,
            timeout=min(self.stage_timeout, SCATTER_TIMEOUT),
        )

    def _scatter_many(self, items: dict[int, np.ndarray]) -> dict[int, Future]:
        """Scatter each worker its own operand, all at once (one round trip, not W).

        A worker that cannot take its operand (it died) is left out of the result, so the stage
        runs without it.
        """
        client = self._client
        timeout = min(self.stage_timeout, SCATTER_TIMEOUT)

        async def scatter_all() -> list:
            return await asyncio.gather(
                *(
                    client._scatter(
                        data,
                        workers=[self._address[w]],
                        direct=True,
                        hash=False,
                        timeout=timeout,
                    )
                    for w, data in items.items()
                ),
                return_exceptions=True,
            )

        placed = {}
        for (w, data), outcome in zip(items.items(), client.sync(scatter_all), strict=True):
            if isinstance(outcome, _WORKER_LOST + (TimeoutError, ValueError, KeyError)):
                logger.warning("worker %d did not take its operand: %s", w, outcome)
                continue
            if isinstance(outcome, BaseException):
                raise outcome
            self._bytes_sent += _nbytes(data)
            placed[w] = outcome
        return placed

    def _submit(self, worker: int, fn: Callable, delay: TaskDelay, *args: Any) -> Future:
        return self._client.submit(
            _run_task,
            fn,
            delay,
            *args,
            workers=[self._address[worker]],
            allow_other_workers=False,
            pure=False,
        )

    # -- the fit ------------------------------------------------------------------------------
    def _fit(
        self,
        R: Any,
        gram: np.ndarray | None,
        callback: Callable | None,
        checkpoint: Callable | None,
        resume: dict | None,
    ) -> None:
        t_start = time.perf_counter()
        self._bytes_sent = 0
        self._bytes_received = 0
        addresses = self._workers()
        self._address = dict(enumerate(addresses))
        self._stragglers = StragglerModel(
            self.straggler_model,
            self.n_workers,
            self.n_stragglers,
            self.straggler_delay,
            n_rounds=self.max_iter + 1,
            seed=self.seed,
        )
        self.timings_: dict[str, float] = {}

        t0 = time.perf_counter()
        try:
            D = self._gram(R) if gram is None else gram
        except _WORKER_LOST as exc:
            raise ClusterError(f"a worker was lost while D was computed: {exc}") from None
        self.timings_["gram"] = time.perf_counter() - t0
        logger.info("pre-computation: D (%d x %d) in %.2f s", *D.shape, self.timings_["gram"])

        size = D.shape[0]
        B = als.initial_factor(size, self.n_factors, self.seed) if resume is None else resume["B"]
        self._checkpoint = checkpoint
        self.history_: list[dict] = [] if resume is None else list(resume["history"])
        self._start_round = 0 if resume is None else resume["iteration"]
        t0 = time.perf_counter()
        if self.mode == "coded":
            B = self._fit_coded(D, B, callback)
        else:
            B = self._fit_row_blocks(D, B, callback)
        self.timings_["iterations"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        U, V = self._post(R, B)
        self.timings_["post"] = time.perf_counter() - t0
        self.user_factors_, self.item_factors_ = U, V
        self.timings_["total"] = time.perf_counter() - t_start
        logger.info(
            "fit: %d updates in %.2f s (converged: %s)",
            self.n_iter_,
            self.timings_["total"],
            self.converged_,
        )

    def _gram(self, R: Any) -> np.ndarray:
        """D = R^T R (or R R^T) on the cluster: one product per row block, summed as a tree."""
        m, n = R.shape
        transposed = m < n
        if hasattr(R, "dask"):
            import dask.array as da

            product = da.dot(R, R.T) if transposed else da.dot(R.T, R)
            result = self._client.compute(product).result(timeout=self.stage_timeout)
            return np.asarray(result.toarray() if sp.issparse(result) else result, np.float64)
        # Split along the dimension that is summed over: rows for R^T R, columns for R R^T.
        data = R.T.tocsr() if (transposed and sp.issparse(R)) else (R.T if transposed else R)
        n_blocks = max(1, min(4 * self.n_workers, data.shape[0]))
        edges = np.linspace(0, data.shape[0], n_blocks + 1).astype(int)
        blocks = [data[a:b] for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]
        # Transposing back inside the task keeps the product R R^T = sum R_j R_j^T.
        futures = self._client.scatter(blocks, hash=False, timeout=self.stage_timeout)
        parts = self._client.map(_block_gram, futures, transposed=False, pure=False)
        while len(parts) > 1:
            pairs = [
                self._client.submit(_add, a, b, pure=False)
                for a, b in zip(parts[::2], parts[1::2], strict=False)
            ]
            parts = pairs + ([parts[-1]] if len(parts) % 2 else [])
        return np.asarray(parts[0].result(timeout=self.stage_timeout), dtype=np.float64)

    # -- collecting the first results of a stage ------------------------------------------------
    def _collect(
        self,
        futures: dict[int, Future],
        need: int,
        estimate: Callable[[list[int]], float] | None = None,
        at_most: int | None = None,
    ) -> tuple[dict[int, Any], dict]:
        """Gather the first ``need`` results (more, up to ``at_most``, while ``estimate`` of the
        decoding error from those in exceeds the target); cancel the rest."""
        t0 = time.perf_counter()
        owner = {f.key: w for w, f in futures.items()}
        done: dict[int, Future] = {}
        failed: list[int] = []
        at_most = need if at_most is None else max(need, at_most)
        if len(futures) < need:
            raise _NotEnoughResults(f"only {len(futures)} workers alive, the stage needs {need}")
        try:
            for future in as_completed(
                list(futures.values()), timeout=self.stage_timeout, loop=self._client.loop
            ):
                w = owner[future.key]
                if future.status == "finished":
                    done[w] = future
                    enough = len(done) >= need and (
                        estimate is None
                        or len(done) >= at_most
                        or estimate(list(done)) <= DECODE_ERROR_TARGET
                    )
                    if enough:
                        break
                else:
                    failed.append(w)
                    if len(futures) - len(failed) < need:
                        raise _NotEnoughResults(
                            f"{len(failed)} of {len(futures)} workers failed, the stage needs "
                            f"{need}"
                        )
        except TimeoutError:
            raise ClusterError(
                f"a stage received {len(done)} of the {need} results it needs within "
                f"stage_timeout={self.stage_timeout:g} s"
            ) from None
        if len(done) < need:
            raise _NotEnoughResults(f"the stage received {len(done)} of {need} results")
        rest = [f for w, f in futures.items() if w not in done]
        if rest:
            self._client.cancel(rest, force=True)
        return self._gather(done, futures, failed, t0)

    def _gather(
        self, chosen: dict[int, Future], futures: dict[int, Future], failed: list[int], t0: float
    ) -> tuple[dict[int, Any], dict]:
        """Results of the ``chosen`` futures (keyed as given) and the stage's record."""
        values = self._client.gather(list(chosen.values()))
        results, compute = {}, []
        for key, (value, seconds) in zip(chosen, values, strict=True):
            results[key] = value
            compute.append(seconds)
            self._bytes_received += _nbytes(value)
        chosen_keys = {f.key for f in chosen.values()}
        used = {owner for owner, f in futures.items() if f.key in chosen_keys}
        info = {
            "seconds": time.perf_counter() - t0,
            "used": sorted(used),
            "late": sorted(w for w in futures if w not in used and w not in failed),
            "failed": sorted(failed),
            "compute": float(np.median(compute)),
        }
        return results, info

    # -- worker liveness and recovery -----------------------------------------------------------
    def _live(self) -> list[int]:
        """Workers that hold their shard and are still in the cluster."""
        alive = self._alive_addresses()
        return [
            w
            for w, f in self._shards.items()
            if f is not None and f.status == "finished" and self._address[w] in alive
        ]

    def _place_shards(self, workers: list[int], make_shard: Callable[[int], np.ndarray]) -> None:
        for w in workers:
            self._shards[w] = self._scatter(make_shard(w), w)

    def _recover(self, make_shard: Callable[[int], np.ndarray], need: int) -> list[int]:
        """Give the shards of dead workers to restarted or new workers; wait (bounded) until at
        least ``need`` hold their shard. Returns the live workers."""
        deadline = time.monotonic() + self.recovery_timeout
        while True:
            live = self._live()
            if len(live) == len(self._shards):
                return live  # the common case: one look at the cluster per round
            dead = [w for w in self._shards if w not in live]
            # An address that lost its shard is dead even while the scheduler still lists it.
            self._dead_addresses.update(self._address[w] for w in dead)
            if dead:
                in_use = {self._address[w] for w in live}
                free = sorted(self._alive_addresses() - in_use - self._dead_addresses)
                for w, address in zip(dead, free, strict=False):
                    logger.warning("worker %d: shard re-scattered to %s", w, address)
                    self._address[w] = address
                    try:
                        self._place_shards([w], make_shard)
                    except (*_WORKER_LOST, TimeoutError, ValueError, KeyError):
                        # The replacement died too (the scheduler may answer KeyError for an
                        # address it has just removed); the next pass looks again.
                        self._shards[w] = None
                    self.recoveries_ += 1
            live = self._live()
            if len(live) >= need:
                return live
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"only {len(live)} workers hold their shard, {need} are needed, and "
                    f"no replacement joined within recovery_timeout={self.recovery_timeout:g} s"
                )
            time.sleep(0.25)

    def _kill_scheduled(self, round_: int, stage: int) -> None:
        for kill in self._stragglers.kills_at(round_, stage):
            if kill in self._fired:
                continue  # a re-run round does not kill again
            self._fired.add(kill)
            address = self._address[kill.worker]
            logger.warning("killing worker %d (%s)", kill.worker, address)
            self.kills_.append({"worker": kill.worker, "round": round_, "stage": stage})

            def fire(address: str = address) -> None:
                # The worker dies before it can answer: whatever run() reports is expected.
                with contextlib.suppress(Exception):
                    self._client.run(_kill_self, workers=[address], on_error="ignore")

            threading.Timer(kill.after, fire).start()

    def _rounds(self, run_round: Callable[[int, list[int]], bool], make_shard, need: int) -> None:
        """Run rounds until one says stop; a round that loses too many workers is re-run after
        the lost shards have been placed again."""
        self.recoveries_ = 0
        self._dead_addresses: set[str] = set()
        self.kills_: list[dict] = []
        self._fired: set = set()
        round_ = self._start_round
        retries = 0
        while True:
            live = self._recover(make_shard, need)
            try:
                stop = run_round(round_, live)
            except (_NotEnoughResults, *_WORKER_LOST) as exc:
                retries += 1
                if retries > self.n_workers:
                    raise ClusterError(f"workers keep failing: {exc}") from None
                logger.warning("round %d re-run: %s", round_, exc)
                continue
            retries = 0
            if stop:
                return
            round_ += 1

    def _save(self, B: np.ndarray, iteration: int) -> None:
        if self._checkpoint is not None:
            self._checkpoint({"B": B, "iteration": iteration, "history": self.history_})

    def _record(self, entry: dict, callback: Callable | None) -> None:
        self.history_.append(entry)
        if callback is not None:
            callback(entry)

    def _converged(self, objective: float, trace_D: float, F: np.ndarray) -> bool:
        if not self.history_:
            return False
        noise = als.objective_noise(trace_D, F, self.regularization)
        change = als.relative_objective_change(self.history_[-1]["objective"], objective, noise)
        return change < self.tol

    @staticmethod
    def _in_memory(D: Any) -> np.ndarray:
        """D as a finite float64 array (read from disk when it is stored there)."""
        D = np.asarray(D if isinstance(D, np.ndarray) else D[...], dtype=np.float64)
        if not np.all(np.isfinite(D)):
            raise InputError("the Gram matrix of R is not finite; rescale R")
        return D

    # -- coded mode ----------------------------------------------------------------------------
    def _fit_coded(self, source: Any, B: np.ndarray, callback: Callable | None) -> np.ndarray:
        code = ALSCode(self.h_, self.n_workers, self.points)
        # A D stored on disk is never loaded whole: the encoder reads it block by block for each
        # shard, so the master holds one shard at a time while the workers fill up.
        D = source if not isinstance(source, np.ndarray) else self._in_memory(source)
        size = D.shape[0]
        padded = code.padded_size(size)
        if padded != size:
            # Zero padding is exact: the padded rows of every factor stay zero.
            # D is padded on the fly by the encoder, so it is never copied.
            B = np.pad(B, ((0, padded - size), (0, 0)))
        trace_D = _trace(D)
        lam = float(self.regularization)
        thresholds = code.stage_thresholds
        K = code.recovery_threshold

        t0 = time.perf_counter()
        self._shards: dict[int, Future | None] = {}
        self._place_shards(
            list(range(self.n_workers)), lambda w, data=D: code.encode_data(data, [w])[0]
        )
        self.timings_["scatter_data"] = time.perf_counter() - t0
        del D

        def make_shard(w: int) -> np.ndarray:
            return code.encode_data(source, [w])[0]

        state = {"B": B, "n_iter": self._start_round, "converged": False}

        def gram_estimate(workers: list[int]) -> float:
            return code.gram_code.estimated_error(workers)

        def run_round(t: int, live: list[int]) -> bool:
            start = time.perf_counter()
            sent, received = self._bytes_sent, self._bytes_received
            B = state["B"]
            master = time.perf_counter()
            factor = code.encode_factor(B)
            master = time.perf_counter() - master
            factor_f = self._scatter_many({w: factor[w] for w in live})
            live = list(factor_f)
            d1, d2 = self._stragglers.delays(t, 1), self._stragglers.delays(t, 2)
            self._kill_scheduled(t, 1)
            stage1 = {
                w: self._submit(w, code.stage1, d1[w], self._shards[w], factor_f[w]) for w in live
            }
            stage2 = {w: self._submit(w, code.stage2, d2[w], factor_f[w]) for w in live}
            self._kill_scheduled(t, 2)
            res1, info1 = self._collect(stage1, thresholds["E"])
            res2, info2 = self._collect(stage2, thresholds["F"], gram_estimate, K)
            tick = time.perf_counter()
            E = code.decode_stage1(res1)
            F = code.decode_stage2(res2)
            e_shards = code.encode_e(E)
            master += time.perf_counter() - tick
            e_f = self._scatter_many({w: e_shards[w] for w in live})
            live = list(e_f)
            d3 = self._stragglers.delays(t, 3)
            self._kill_scheduled(t, 3)
            stage3 = {w: self._submit(w, code.stage3, d3[w], factor_f[w], e_f[w]) for w in live}
            res3, info3 = self._collect(stage3, thresholds["S"], gram_estimate, K)
            tick = time.perf_counter()
            S = code.decode_stage3(res3)
            master += time.perf_counter() - tick
            objective = als.objective_from_gram(trace_D, F, S, lam)
            stages = {"E": info1, "F": info2, "S": info3}
            converged = self._converged(objective, trace_D, F)
            stop = converged or t >= self.max_iter
            if not stop:
                tick = time.perf_counter()
                G = als.update_matrix(F, S, lam)
                master += time.perf_counter() - tick
                g_f = self._scatter_many({w: G for w in live})
                live = list(g_f)
                d4 = self._stragglers.delays(t, 4)
                self._kill_scheduled(t, 4)
                stage4 = {w: self._submit(w, code.stage4, d4[w], e_f[w], g_f[w]) for w in live}
                res4, info4 = self._collect(
                    stage4, thresholds["B"], code.gram_code.estimated_b_error, K
                )
                tick = time.perf_counter()
                B_next = code.decode_stage4(res4)
                master += time.perf_counter() - tick
                if not np.all(np.isfinite(B_next)):
                    raise als.NonFiniteFactorsError(f"factors became NaN/inf at iteration {t + 1}")
                stages["B"] = info4
                state["B"] = B_next
                pending_checkpoint = B_next[:size]
                state["n_iter"] = t + 1
            else:
                # Post-computation, eq. (29): H = B (B^T B + lam I)^-1 through the coded stages.
                inverse = np.linalg.inv(F + lam * np.eye(F.shape[0]))
                g_f = self._scatter_many({w: inverse for w in live})
                b_right = code.encode_e(B)  # f_R(B, x_w)
                b_f = self._scatter_many({w: b_right[w] for w in g_f})
                live = list(b_f)
                stage4 = {
                    w: self._submit(w, code.stage4, TaskDelay(), b_f[w], g_f[w]) for w in live
                }
                res4, info4 = self._collect(
                    stage4, thresholds["B"], code.gram_code.estimated_b_error, K
                )
                state["H"] = code.decode_stage4(res4)[:size]
                stages["H"] = info4
                state["converged"] = converged
            self._record(
                {
                    "iteration": t,
                    "time": time.perf_counter() - start,
                    "objective": objective,
                    "master_seconds": master,
                    "bytes_sent": self._bytes_sent - sent,
                    "bytes_received": self._bytes_received - received,
                    "stages": stages,
                },
                callback,
            )
            if not stop:
                self._save(pending_checkpoint, t + 1)
            return stop

        self._rounds(run_round, make_shard, K)
        self.n_iter_ = state["n_iter"]
        self.converged_ = state["converged"]
        self._H = state["H"]
        return state["B"][:size]

    # -- uncoded and replication baselines -----------------------------------------------------
    def _fit_row_blocks(self, source: Any, B: np.ndarray, callback: Callable | None) -> np.ndarray:
        D = self._in_memory(source)
        size = D.shape[0]
        copies = 1 if self.mode == "uncoded" else self.n_stragglers + 1
        n_blocks = max(1, self.n_workers // copies)
        edges = np.linspace(0, size, n_blocks + 1).astype(int)
        block_of = {w: w % n_blocks for w in range(self.n_workers)}
        lam = float(self.regularization)
        trace_D = float(np.trace(D))
        del D  # shards are slices of the source

        def make_shard(w: int) -> np.ndarray:
            b = block_of[w]
            return np.ascontiguousarray(source[edges[b] : edges[b + 1]], dtype=np.float64)

        self._shards = {}
        t0 = time.perf_counter()
        self._place_shards(list(range(self.n_workers)), make_shard)
        self.timings_["scatter_data"] = time.perf_counter() - t0
        state = {"B": B, "n_iter": self._start_round, "converged": False}

        def run_round(t: int, live: list[int]) -> bool:
            start = time.perf_counter()
            sent, received = self._bytes_sent, self._bytes_received
            B = state["B"]
            delays = self._stragglers.delays(t, 1)
            self._kill_scheduled(t, 1)
            b_f = self._scatter_many({w: B for w in live})
            live = list(b_f)
            futures = {
                w: self._submit(w, _row_block_product, delays[w], self._shards[w], b_f[w])
                for w in live
            }
            results, info = self._collect_blocks(futures, block_of, n_blocks)
            tick = time.perf_counter()
            E = np.vstack([results[b] for b in range(n_blocks)])
            F = B.T @ B
            S = B.T @ E
            objective = als.objective_from_gram(trace_D, F, S, lam)
            converged = self._converged(objective, trace_D, F)
            stop = converged or t >= self.max_iter
            if not stop:
                B_next = E @ als.update_matrix(F, S, lam)
                if not np.all(np.isfinite(B_next)):
                    raise als.NonFiniteFactorsError(f"factors became NaN/inf at iteration {t + 1}")
                state["B"], state["n_iter"] = B_next, t + 1
                pending_checkpoint = B_next
            else:
                state["H"] = np.linalg.solve(F + lam * np.eye(F.shape[0]), B.T).T
                state["converged"] = converged
            self._record(
                {
                    "iteration": t,
                    "time": time.perf_counter() - start,
                    "objective": objective,
                    "master_seconds": time.perf_counter() - tick,
                    "bytes_sent": self._bytes_sent - sent,
                    "bytes_received": self._bytes_received - received,
                    "stages": {"E": info},
                },
                callback,
            )
            if not stop:
                self._save(pending_checkpoint, t + 1)
            return stop

        self._rounds(run_round, make_shard, n_blocks)
        self.n_iter_ = state["n_iter"]
        self.converged_ = state["converged"]
        self._H = state["H"]
        return state["B"]

    def _collect_blocks(
        self, futures: dict[int, Future], block_of: dict[int, int], n_blocks: int
    ) -> tuple[dict[int, np.ndarray], dict]:
        """The first finished copy of every block of D B."""
        t0 = time.perf_counter()
        owner = {f.key: w for w, f in futures.items()}
        first: dict[int, int] = {}
        failed: list[int] = []
        missing = set(range(n_blocks)) - {block_of[w] for w in futures}
        if missing:
            raise _NotEnoughResults(f"no live worker holds block(s) {sorted(missing)}")
        pending = {b: {w for w in futures if block_of[w] == b} for b in range(n_blocks)}
        try:
            for future in as_completed(
                list(futures.values()), timeout=self.stage_timeout, loop=self._client.loop
            ):
                w = owner[future.key]
                b = block_of[w]
                if future.status != "finished":
                    failed.append(w)
                    pending[b].discard(w)
                    if b not in first and not pending[b]:
                        raise _NotEnoughResults(f"every copy of block {b} failed")
                    continue
                if b not in first:
                    first[b] = w
                    # the other copies of this block are no longer needed
                    others = [futures[v] for v in pending[b] if v != w]
                    if others:
                        self._client.cancel(others, force=True)
                    if len(first) == n_blocks:
                        break
        except TimeoutError:
            raise ClusterError(
                f"{len(first)} of {n_blocks} blocks arrived within "
                f"stage_timeout={self.stage_timeout:g} s"
            ) from None
        return self._gather({b: futures[w] for b, w in first.items()}, futures, failed, t0)

    # -- post-computation ------------------------------------------------------------------------
    def _post(self, R: Any, B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """U = R H (m >= n) or V = R^T H (m < n), eqs. (29)-(31) corrected."""
        H = self._H
        if hasattr(R, "dask"):
            product = (R.T if self.transposed_ else R) @ H
            other = np.asarray(self._client.compute(product).result(timeout=self.stage_timeout))
        else:
            other = np.asarray((R.T if self.transposed_ else R) @ H)
        if self.transposed_:
            return B, other
        return other, B
