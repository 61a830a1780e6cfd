"""The master of one fit: shards on the workers, rounds of exchanges, recovery from lost workers.

A :class:`Master` is made for one fit and dropped at its end. It owns everything that lives only
as long as the fit: which worker holds which shard, the fault injector, the bytes moved, the
phase timings, the history. Every mode and protocol (:mod:`dask_coded_als.engine.schemes`) runs
through the same round loop (:meth:`Master.run`) and the same collection path
(:meth:`Master.exchange`):

* every worker's operands are sent to it directly and concurrently, and its task is submitted as
  soon as they have arrived, so a slow or dead worker never holds up the others;
* answers come straight from the workers (``gather(direct=True)``) as they finish, and the
  exchange ends as soon as its rule is satisfied;
* the tasks no longer needed are told to stop (a worker-local flag, see
  :mod:`dask_coded_als.engine.tasks`) and cancelled, without waiting for either.

A round is re-run only when workers were lost before its update was applied; the lost shards are
first placed again on workers that joined (restarted processes or spares), waiting at most
``recovery_timeout``. The cluster is asked for its worker list only when something failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg  # noqa: F401  (sp.linalg.norm)
from distributed import Client, Future
from distributed.comm.core import CommClosedError
from distributed.scheduler import KilledWorker
from threadpoolctl import threadpool_limits

from dask_coded_als import als
from dask_coded_als._util import one_line
from dask_coded_als.coding import theory
from dask_coded_als.coding.theory import ClusterRates
from dask_coded_als.data.gram import block_gram, sum_parts, tree_sum
from dask_coded_als.engine import memory, tasks
from dask_coded_als.engine.calibration import measure_rates
from dask_coded_als.engine.cluster import probe_workers, worker_addresses
from dask_coded_als.engine.exchange import Answers, Exchange, Scatter
from dask_coded_als.engine.faults import FaultInjector
from dask_coded_als.engine.records import StageRecord, Timings
from dask_coded_als.engine.stragglers import StragglerModel
from dask_coded_als.errors import ClusterError, CodedALSError

__all__ = ["Master", "Settings", "FitResult"]

logger = logging.getLogger(__name__)

#: What a worker dying under a scatter, a task or a gather looks like from the master.
WORKER_LOST = (CancelledError, KilledWorker, CommClosedError, OSError)
#: Seconds a scatter to one worker may take before that worker counts as unreachable.
SCATTER_TIMEOUT = 10.0
#: The objective's terms in S move by at most the decoding's relative error times trace(D)
#: each; this many times that counts as rounding in the convergence test.
DECODE_NOISE_FACTOR = 4.0
#: Seconds the end of a fit waits for messages still on their way, and for the workers' ledgers.
CLOSING_TIMEOUT = 1.0


@dataclass(frozen=True)
class Settings:
    """The validated parameters of a fit (see :class:`dask_coded_als.CodedALS`)."""

    n_factors: int
    n_workers: int
    partition: tuple[int, int] | str | None  # (p, r), "auto" or None (the baselines)
    n_stragglers: int
    verify: int
    mode: str
    protocol: str
    straggler_model: str
    straggler_delay: float
    points: str | None
    max_iter: int
    tol: float
    regularization: float
    seed: int | None
    stage_timeout: float
    recovery_timeout: float
    dtype: str = "float64"


@dataclass
class FitResult:
    """What a fit hands back to the estimator."""

    user_factors: np.ndarray
    item_factors: np.ndarray
    history: list[dict]
    n_iter: int
    converged: bool
    timings: dict[str, float]
    kills: list[dict]
    wrong_answers: dict[int, int]
    recoveries: int
    workers: dict[int, str]
    partition: tuple[int, int] | None
    points: str | None
    rates: ClusterRates | None


class LostWorkers(Exception):
    """A round lost more workers than it can spare; it is re-run after recovery."""


class Master:
    """Runs one fit on ``client``.

    Parameters
    ----------
    client : distributed.Client
    settings : Settings
    callback : callable or None
        Called with each round's history entry as soon as the round ends.
    checkpoint : callable or None
        Called after every update with ``{"B", "iteration", "history"}``.
    workers : dict or None
        Updated in place with the address of every worker index (it changes on recovery).
    """

    def __init__(
        self,
        client: Client,
        settings: Settings,
        callback: Callable[[dict], None] | None = None,
        checkpoint: Callable[[dict], None] | None = None,
        workers: dict[int, str] | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self._callback = callback
        self._checkpoint = checkpoint
        self.token = uuid.uuid4().hex[:8]
        self.timings = Timings()
        self.address: dict[int, str] = {} if workers is None else workers
        self.shards: dict[int, Future | None] = {}
        self._dead: set[str] = set()
        self._suspects: set[int] = set()
        self.recoveries = 0
        #: worker -> rounds in which its answer disagreed with the others (``verify``)
        self.wrong_answers: dict[int, int] = {}
        self.bytes_sent = 0
        self.bytes_received = 0
        self._master_seconds = 0.0
        self._exchanges = 0
        #: exchange number -> (history entry or None, stage name, record) for the ledger
        self._records: dict[int, tuple[StageRecord, str]] = {}
        self._round_records: list[tuple[int, str, StageRecord]] = []
        self._background: set[asyncio.Future] = set()
        #: every task submitted, so that those still pending at the end can be cancelled
        self._pending: weakref.WeakSet[Future] = weakref.WeakSet()
        self.history: list[dict] = []
        self.faults: FaultInjector | None = None
        self.rates: ClusterRates | None = None
        self.trace = 0.0
        #: address -> whether that worker opens the data source (asked once)
        self._opens: dict[str, bool] = {}

    # -- the fit ------------------------------------------------------------------------------
    def run(
        self,
        R: Any,
        gram: Any,
        resume: dict | None,
        progress: Callable[[int, int], None] | None = None,
    ) -> FitResult:
        """Fit R (validated by the estimator); ``gram`` is D or None; ``progress(done, total)``
        follows the placement of the shards (workers)."""
        from dask_coded_als.engine.schemes import make_scheme

        s = self.settings
        transposed = R.shape[0] < R.shape[1]  # D = R R^T and B = U
        with self.timings.phase("total"):
            self._join()
            self.faults = FaultInjector(
                StragglerModel(
                    s.straggler_model,
                    s.n_workers,
                    s.n_stragglers,
                    s.straggler_delay,
                    n_rounds=s.max_iter + 1,
                    seed=s.seed,
                ),
                self.client,
                lambda w: self.address[w],
            )
            try:
                self._check_memory(min(R.shape), gram is None)  # before D or any shard exists
                with self.timings.phase("gram"):
                    D = gram
                    if D is None:
                        D = compute_gram(self.client, R, s.n_workers, s.stage_timeout)
                    # trace(D) = ||R||_F^2, from R: D may be where only the workers read it
                    self.trace = squared_norm(self.client, R, s.stage_timeout)
                if s.partition == "auto":
                    with self.timings.phase("calibration"):
                        self._choose_partition(int(D.shape[0]))
                    self._check_memory(int(D.shape[0]), False)
                scheme = make_scheme(self, D)
                del D
                size = scheme.size
                B = als.initial_factor(size, s.n_factors, s.seed) if resume is None else resume["B"]
                self.history = [] if resume is None else list(resume["history"])
                start = 0 if resume is None else resume["iteration"]
                with self.timings.phase("scatter_data"):
                    self._place(list(range(s.n_workers)), scheme, progress)
                # The master's algebra is small (l x d and d x d); on a machine it shares with
                # workers, more BLAS threads only contend with them (measured: 3x slower rounds
                # with 2 threads on 2 cores under 13 workers).
                with self.timings.phase("iterations"), threadpool_limits(1, user_api="blas"):
                    B, H, n_iter, converged = self._rounds(scheme, B, start)
                with self.timings.phase("post"):
                    other = self._other_factor(R, H, transposed)
            except Exception as exc:
                if not isinstance(exc, CodedALSError):
                    self._check_scheduler(exc)  # whatever a lost scheduler surfaced as
                raise
            finally:
                self._close()
        U, V = (B, other) if transposed else (other, B)
        return FitResult(
            user_factors=U,
            item_factors=V,
            history=self.history,
            n_iter=n_iter,
            converged=converged,
            timings=dict(self.timings),
            kills=list(self.faults.kills),
            wrong_answers=dict(sorted(self.wrong_answers.items())),
            recoveries=self.recoveries,
            workers=dict(self.address),
            partition=self.settings.partition,
            points=getattr(scheme, "points", None),
            rates=self.rates,
        )

    def _choose_partition(self, size: int) -> None:
        """Measure the cluster and pick the partition the model expects to be fastest."""
        s = self.settings
        addresses = [self.address[w] for w in sorted(self.address)]
        self.rates = measure_rates(self.client, addresses, dtype=s.dtype)
        circle = None if s.points is None else s.points == "circle"
        chosen = theory.choose_partition(
            s.n_workers, s.n_stragglers, size, s.n_factors, self.rates, circle, s.dtype
        )
        logger.info("partition %s chosen for %s", chosen, self.rates)
        self.settings = dataclasses.replace(s, partition=chosen)

    def _rounds(self, scheme: Any, B: np.ndarray, start: int) -> tuple:
        """Rounds until convergence or ``max_iter`` updates; returns (B, H, n_iter, converged)."""
        s = self.settings
        lam = float(s.regularization)
        B = scheme.pad(B)
        t = start
        attempts = 0
        while True:
            live = self._recover(scheme)
            self.faults.start_round(t)
            begin = time.perf_counter()
            sent, received = self.bytes_sent, self.bytes_received
            self._master_seconds = 0.0
            self._round_records = []
            try:
                F, S, state = scheme.gram_quantities(t, B, live)
                with self.master_time():
                    objective = als.objective_from_gram(self.trace, F, S, lam)
                    converged = self._converged(objective, self.trace, F, state["decode_error"])
                stop = converged or t >= s.max_iter
                if stop:
                    H = scheme.post(t, state, B, F)
                else:
                    with self.master_time():
                        G = als.update_matrix(F, S, lam)
                    B_next = scheme.update(t, state, G)
                    if not np.all(np.isfinite(B_next)):
                        raise als.NonFiniteFactorsError(
                            f"factors became NaN/inf at iteration {t + 1}"
                        )
            except LostWorkers as exc:
                attempts += 1
                if attempts > s.n_workers:
                    raise ClusterError(f"workers keep failing: {exc}") from None
                logger.warning("round %d re-run: %s", t, exc)
                continue
            attempts = 0
            entry = {
                "iteration": t,
                "time": time.perf_counter() - begin,
                "objective": objective,
                "master_seconds": self._master_seconds,
                "decode_error": state["decode_error"],
                "bytes_sent": self.bytes_sent - sent,
                "bytes_received": self.bytes_received - received,
                "cpu_seconds": sum(r.cpu_seconds for _, _, r in self._round_records),
                "stages": {name: r.to_dict() for _, name, r in self._round_records},
            }
            for number, name, record in self._round_records:
                self._records[number] = (entry, name, record)
            self.history.append(entry)
            if self._callback is not None:
                self._callback(entry)
            if stop:
                return scheme.unpad(B), H, t, converged
            B = B_next
            t += 1
            if self._checkpoint is not None:
                self._checkpoint({"B": scheme.unpad(B), "iteration": t, "history": self.history})

    def _converged(
        self, objective: float, trace_D: float, F: np.ndarray, decode_error: float
    ) -> bool:
        """Whether the relative change of the objective is below ``tol``, changes within the
        rounding of the objective counting as none: that of the d x d algebra
        (:func:`dask_coded_als.als.objective_noise`) and that of the decoding, whose relative
        error moves each of the objective's terms in S by at most that much of trace(D)."""
        if not self.history:
            return False
        noise = als.objective_noise(trace_D, F, self.settings.regularization)
        noise += DECODE_NOISE_FACTOR * decode_error * abs(trace_D)
        change = als.relative_objective_change(self.history[-1]["objective"], objective, noise)
        return change < self.settings.tol

    @contextlib.contextmanager
    def master_time(self) -> Iterator[None]:
        """Counts the enclosed work as the master's (encoding, decoding, d x d algebra)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self._master_seconds += time.perf_counter() - start

    def _other_factor(self, R: Any, H: np.ndarray, transposed: bool) -> np.ndarray:
        """U = R H (m >= n) or V = R^T H (m < n), eqs. (29)-(31) corrected."""
        product = (R.T if transposed else R) @ H
        if hasattr(product, "dask"):
            product = self.client.compute(product).result(timeout=self.settings.stage_timeout)
        return np.asarray(product)

    # -- workers and shards --------------------------------------------------------------------
    def _check_memory(self, size: int, gram_on_cluster: bool) -> None:
        """Refuse at once a fit whose D or shards cannot fit in memory (engine/memory.py)."""
        s = self.settings
        if gram_on_cluster:  # D comes back to this process
            memory.check_gram_here(size)
        memory.check_workers(
            self.client,
            [self.address[w] for w in sorted(self.address)],
            size,
            s.n_factors,
            s.mode,
            None if s.partition == "auto" else s.partition,
            s.n_stragglers,
            s.points,
            gram_on_cluster,
            s.dtype,
        )

    def _check_scheduler(self, exc: BaseException | None = None) -> None:
        """Raise ClusterError when the client has lost its scheduler.

        The client then cancels every future (the shards with them) and tries to reconnect
        for its connect timeout; a reconnected scheduler would hold none of the fit's data, so
        the fit ends now rather than after that wait.
        """
        if self.client.status == "running":
            return
        why = f" ({one_line(exc)})" if exc is not None else ""
        address = getattr(self.client.scheduler, "address", "")  # None once the client closed
        raise ClusterError(f"lost the connection to the scheduler {address}{why}") from None

    def _alive(self) -> set[str]:
        self._check_scheduler()
        try:
            return worker_addresses(self.client)
        except Exception as exc:  # OSError, or a KeyError from an answer cut short
            self._check_scheduler(exc)
            raise

    def _join(self) -> None:
        """Take the first ``n_workers`` workers of the cluster, waiting (bounded) for them.

        Polls the scheduler rather than calling ``Client.wait_for_workers``, which on a
        LocalCluster's client replaces the cluster's own view of its workers with a snapshot
        (see docs/reliability.md).
        """
        n = self.settings.n_workers
        deadline = time.monotonic() + self.settings.recovery_timeout
        while len(alive := self._alive()) < n:
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"the cluster has {len(alive)} workers, the fit needs n_workers={n}"
                )
            time.sleep(0.1)
        self.address.update(enumerate(sorted(alive)[:n]))

    def _place(
        self,
        workers: list[int],
        scheme: Any,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """Put the shards of ``workers`` in place: each built by its worker from the scheme's
        source when that worker can open it, else built here and sent. ``progress(done,
        total)`` is called as each is in place."""
        count = itertools.count(1)

        def placed() -> None:
            done = next(count)
            if progress is not None:
                progress(done, len(workers))

        remote = [w for w in workers if self._opens_source(w, scheme.source)]
        for w in remote:
            self.shards[w] = self.client.submit(
                tasks.build_shard,
                scheme.builder,
                scheme.source,
                w,
                key=f"shard-w{w}-{self.token}-{uuid.uuid4().hex[:6]}",
                workers=[self.address[w]],
                allow_other_workers=False,
                pure=False,
            )
        sent = []
        for w in workers:
            if w in remote:
                continue
            shard = scheme.shard(w)
            try:
                scattered = self.client.scatter(
                    shard,
                    workers=[self.address[w]],
                    direct=True,
                    hash=False,
                    timeout=min(self.settings.stage_timeout, SCATTER_TIMEOUT),
                )
            except (*WORKER_LOST, KeyError):
                # The worker died (the scheduler may answer KeyError for an address it has just
                # removed): no shard; the rounds' recovery places it again.
                self.shards[w] = None
                continue
            self.bytes_sent += shard.nbytes
            # A scattered array may lie unaligned in the worker's memory, where numpy
            # multiplies it without BLAS: the worker keeps an aligned copy instead.
            self.shards[w] = self.client.submit(
                tasks.aligned,
                scattered,
                key=f"shard-w{w}-{self.token}-{uuid.uuid4().hex[:6]}",
                workers=[self.address[w]],
                allow_other_workers=False,
                pure=False,
            )
            sent.append(w)
        self._await_shards(remote + sent, placed)

    def _opens_source(self, w: int, source: Any) -> bool:
        """Whether worker w can open ``source`` (asked once per address, all at once at the
        start); the workers that cannot get their shards from the master."""
        if source is None:
            return False
        address = self.address[w]
        if address not in self._opens:
            asked = [a for a in self.address.values() if a not in self._opens]
            # the first task on a fresh worker process imports this package: seconds
            timeout = max(self.settings.recovery_timeout, SCATTER_TIMEOUT)
            found = probe_workers(
                self.client, tasks.open_source, source, addresses=asked, timeout=timeout
            )
            failing = {a: why for a, why in found.items() if why is not None}
            if failing:
                a, why = next(iter(failing.items()))
                logger.warning(
                    "%d workers cannot open %r (e.g. %s: %s); their shards are built here and sent",
                    len(failing),
                    source,
                    a,
                    why,
                )
            self._opens.update({a: why is None for a, why in found.items()})
        return self._opens.get(address, False)

    def _await_shards(self, workers: list[int], placed: Callable[[], None]) -> None:
        """Wait until the shards the workers build are in place. A worker that dies meanwhile
        gets no shard (the rounds' recovery places it again); an error in a build is raised;
        no progress within ``stage_timeout`` is a :class:`ClusterError`."""
        pending = {w: self.shards[w] for w in workers}
        timeout = self.settings.stage_timeout
        last = time.monotonic()
        while pending:
            with contextlib.suppress(Exception):  # errors are looked at below
                next(iter(pending.values())).exception(timeout=1.0)
            for w, future in list(pending.items()):
                if future.status == "finished":
                    del pending[w]
                    last = time.monotonic()
                    placed()
                elif future.status == "error":
                    error = future.exception()
                    if not isinstance(error, WORKER_LOST):
                        raise error
                    self.shards[w] = None
                    del pending[w]
            if pending:
                alive = self._alive()
                for w in [w for w in pending if self.address[w] not in alive]:
                    logger.warning("worker %d died while it built its shard", w)
                    self.client.cancel(pending.pop(w))
                    self.shards[w] = None
            if pending and time.monotonic() - last > timeout:
                raise ClusterError(
                    f"{len(pending)} workers did not build their shards within "
                    f"stage_timeout={timeout:g} s"
                )

    def _live(self) -> list[int]:
        """Workers whose shard is in place, as far as this client knows (no message)."""
        return [w for w, f in self.shards.items() if f is not None and f.status == "finished"]

    def _recover(self, scheme: Any) -> list[int]:
        """The live workers, after giving the shards of lost workers to workers that joined;
        waits (bounded by ``recovery_timeout``) until at least ``scheme.need`` are live."""
        live = self._live()
        if len(live) == len(self.shards) and not self._suspects:
            return live  # the common case: no message to the scheduler
        deadline = time.monotonic() + self.settings.recovery_timeout
        while True:
            alive = self._alive()
            self._suspects = set()
            live = [w for w in self._live() if self.address[w] in alive]
            dead = [w for w in self.shards if w not in live]
            # An address that lost its shard is dead even while the scheduler still lists it.
            self._dead.update(self.address[w] for w in dead)
            if dead:
                in_use = {self.address[w] for w in live}
                free = sorted(alive - in_use - self._dead)
                for w, address in zip(dead, free, strict=False):
                    logger.warning("worker %d: shard placed again on %s", w, address)
                    self.address[w] = address
                    self.recoveries += 1
                    with self.timings.phase("recovery"):
                        self._place([w], scheme)  # if the replacement died, the next pass looks
                live = [w for w in self._live() if self.address[w] in alive]
            if len(live) >= scheme.need:
                return live
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"only {len(live)} workers hold their shard, {scheme.need} are needed, and "
                    f"no replacement joined within "
                    f"recovery_timeout={self.settings.recovery_timeout:g} s"
                )
            time.sleep(0.25)

    # -- one exchange ---------------------------------------------------------------------------
    def exchange(self, t: int, spec: Exchange) -> Answers:
        """Run one exchange of round ``t``; raises :class:`LostWorkers` when too few answered."""
        self._exchanges += 1
        number = self._exchanges
        delays = self.faults.delays(t, spec.stage)
        start = time.perf_counter()
        outcome = self.client.sync(self._exchange, t, spec, number, delays)
        reports, failed, late, operands, timed_out, phases = outcome
        seconds = time.perf_counter() - start
        answered = list(reports)
        if not spec.rule.sufficient(answered):
            if timed_out:
                raise ClusterError(
                    f"exchange {spec.name} of round {t} received {len(answered)} answers within "
                    f"stage_timeout={self.settings.stage_timeout:g} s, not enough to decode"
                )
            raise LostWorkers(
                f"exchange {spec.name}: {len(failed)} of {len(spec.workers)} workers failed, "
                f"{len(answered)} answered"
            )
        used = spec.rule.used(answered)
        values = {}
        for w in used:
            values[w] = reports[w].value
            self.bytes_received += _nbytes(reports[w].value)
        record = StageRecord(
            seconds=seconds,
            used=used,
            late=sorted(late + [w for w in answered if w not in used]),
            failed=sorted(failed),
            compute=float(np.median([reports[w].compute_seconds for w in used])),
            cpu_seconds=float(sum(r.cpu_seconds for r in reports.values())),
            send=_median(phases[w][1] - phases[w][0] for w in used),
            queue=_median(reports[w].started - phases[w][2] for w in used),
            returned=_median(phases[w][3] - reports[w].ended for w in used),
        )
        record.late_cpu_seconds = float(
            sum(r.cpu_seconds for w, r in reports.items() if w not in used)
        )
        self._round_records.append((number, spec.name, record))
        return Answers(values, record, operands)

    async def _exchange(self, t: int, spec: Exchange, number: int, delays: list) -> tuple:
        """The exchange on the client's event loop: a pipeline per worker (send its operands,
        submit its task, fetch its answer) and a collector that stops at the rule."""
        client = self.client
        stop_key = f"{self.token}-{number}"
        timeout = min(self.settings.stage_timeout, SCATTER_TIMEOUT)
        dtype = np.result_type(self.settings.dtype)  # operands in the shards' precision
        over = False
        submitted: dict[int, Future] = {}
        operands: dict[int, list[Future]] = {}

        async def pipeline(w: int) -> tuple[int, Any, BaseException | None]:
            address = self.address[w]
            # epoch seconds, comparable with the task's own: start, operands placed, task
            # submitted, answer in hand
            clock = phases[w] = [time.time()]
            try:
                args = []
                for item in spec.args(w):
                    if isinstance(item, Scatter):
                        data = item.data
                        if data.dtype.kind == "f":
                            data = data.astype(dtype, copy=False)
                        # counted when sent, so that a round counts its late workers' operands
                        self.bytes_sent += data.nbytes
                        future = await client.scatter(
                            data, workers=[address], direct=True, hash=False, timeout=timeout
                        )
                        operands.setdefault(w, []).append(future)
                        args.append(future)
                    else:
                        self.bytes_sent += _nbytes(item)
                        args.append(item)
                clock.append(time.time())
                if over:
                    return w, None, None
                future = client.submit(
                    tasks.run_task,
                    self.token,
                    number,
                    w,
                    stop_key,
                    delays[w],
                    spec.function,
                    *args,
                    key=f"{spec.name}-iter{t}-w{w}-{stop_key}",
                    workers=[address],
                    allow_other_workers=False,
                    pure=False,
                )
                submitted[w] = future
                clock.append(time.time())
                report = await client.gather(future, direct=True)
                clock.append(time.time())
                return w, report, None
            except Exception as exc:  # a lost worker shows as many kinds of error
                return w, None, exc

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.stage_timeout
        phases: dict[int, list[float]] = {}
        pending = {asyncio.ensure_future(pipeline(w)) for w in spec.workers}
        for task in pending:  # the end of the fit waits (bounded) for the stragglers among them
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        reports: dict[int, tasks.TaskReport] = {}  # in order of arrival
        failed: list[int] = []
        timed_out = False
        start = loop.time()
        patience = getattr(spec.rule, "patience", None)
        while pending and not spec.rule.satisfied(list(reports)):
            if not spec.rule.possible([w for w in spec.workers if w not in failed]):
                break
            remaining = deadline - loop.time()
            if remaining <= 0:
                timed_out = True
                break
            finished, pending = await asyncio.wait(
                pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            for task in finished:
                w, report, error = task.result()
                if error is not None or report is None or report.stopped:
                    logger.info("worker %d failed in exchange %s: %r", w, spec.name, error)
                    failed.append(w)
                    self._suspects.add(w)
                else:
                    reports[w] = report
                    if patience is not None and len(reports) == spec.rule.need:
                        # more answers check these ones; wait for them only so long
                        now = loop.time()
                        deadline = min(deadline, now + patience * (now - start))
        over = True
        late = [w for w in spec.workers if w not in reports and w not in failed]
        self._stop([w for w in late if w in submitted], stop_key)
        self._pending.update(submitted.values())
        return reports, failed, late, operands, timed_out, phases

    def _stop(self, workers: list[int], stop_key: str) -> None:
        """Tell the late tasks to stop, without waiting.

        They are not cancelled: a stopped task ends within one chunk with an empty answer that
        its pipeline fetches and drops, while cancelling a task whose answer is being fetched
        makes the scheduler log an error.
        """
        addresses = [self.address[w] for w in workers if self._holds(w)]
        if not addresses:
            return
        client = self.client

        async def tell() -> None:
            with contextlib.suppress(Exception):
                await client.run(tasks.stop, stop_key, workers=addresses, on_error="ignore")

        task = asyncio.ensure_future(tell())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _holds(self, w: int) -> bool:
        shard = self.shards.get(w)
        return shard is not None and shard.status == "finished"

    # -- the end of a fit -------------------------------------------------------------------------
    def _close(self) -> None:
        """Cancel pending kills, give the last messages a moment, and add the late tasks' CPU
        seconds from the workers' ledgers to the history.

        Nothing here waits long for a worker: a message to a worker that has just died waits
        for distributed's connect timeout, so every wait is bounded by CLOSING_TIMEOUT.
        """
        if self.faults is not None:
            self.faults.finish()
        if self.client.status != "running":
            return  # the scheduler is lost: nobody to ask, and the messages would only fail late
        with contextlib.suppress(Exception):
            ledgers = self.client.sync(self._closing)
            for entries in ledgers.values():
                for number, w, cpu, stopped in entries:
                    self._account(number, w, cpu, stopped)

    async def _closing(self) -> dict:
        if self._background:
            await asyncio.wait(set(self._background), timeout=CLOSING_TIMEOUT)
        hung = [f for f in self._pending if f.status == "pending"]
        if hung:  # tasks of workers that never answered (none of them is being fetched)
            await self.client.cancel(hung, force=True)
        holders = [a for w, a in self.address.items() if self._holds(w)]
        ledgers = asyncio.ensure_future(
            self.client.run(tasks.take_ledger, self.token, workers=holders, on_error="ignore")
        )
        done, _ = await asyncio.wait({ledgers}, timeout=CLOSING_TIMEOUT)
        return ledgers.result() if done else {}

    def _account(self, number: int, w: int, cpu: float, stopped: bool) -> None:
        found = self._records.get(number)
        if found is None:
            return  # an exchange of a round that was run again
        entry, name, record = found
        if w in record.used:
            return  # counted when its answer arrived
        record.cpu_seconds += cpu
        record.late_cpu_seconds += cpu
        entry["cpu_seconds"] += cpu
        if stopped:
            record.stopped = sorted({*record.stopped, w})
        entry["stages"][name] = record.to_dict()


def _median(values: Iterable[float]) -> float:
    return float(np.median(list(values)))


def _nbytes(value: Any) -> int:
    if isinstance(value, tuple):
        return sum(_nbytes(v) for v in value)
    return int(getattr(value, "nbytes", 0))


def squared_norm(client: Client, R: Any, timeout: float) -> float:
    """``||R||_F^2``, which is trace(R^T R) and trace(R R^T)."""
    if sp.issparse(R):
        return float(sp.linalg.norm(R, "fro") ** 2)
    if hasattr(R, "dask"):
        return float(client.compute((R**2).sum()).result(timeout=timeout))
    return float(np.vdot(R, R))


def compute_gram(client: Client, R: Any, n_workers: int, timeout: float) -> np.ndarray:
    """D = R^T R (or R R^T when R is wide) on the cluster: one product per row block of R (of
    R^T), summed as a tree."""
    m, n = R.shape
    transposed = m < n
    if hasattr(R, "dask"):
        import dask.array as da

        product = da.dot(R, R.T) if transposed else da.dot(R.T, R)
        result = client.compute(product).result(timeout=timeout)
        return np.asarray(result.toarray() if sp.issparse(result) else result, np.float64)
    # Split along the dimension that is summed over: rows for R^T R, columns for R R^T.
    data = R.T.tocsr() if (transposed and sp.issparse(R)) else (R.T if transposed else R)
    n_blocks = max(1, min(4 * n_workers, data.shape[0]))
    edges = np.linspace(0, data.shape[0], n_blocks + 1).astype(int)
    blocks = [data[a:b] for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]
    try:
        futures = client.scatter(blocks, hash=False, timeout=timeout)
        parts = client.map(block_gram, futures, pure=False)
        total = tree_sum(parts, lambda *p: client.submit(sum_parts, *p, pure=False))
        result = total.result(timeout=timeout)
        return result.toarray() if sp.issparse(result) else np.asarray(result, np.float64)
    except TimeoutError:
        raise ClusterError(f"D was not computed within stage_timeout={timeout:g} s") from None
    except WORKER_LOST as exc:
        raise ClusterError(f"a worker was lost while D was computed: {exc}") from None
