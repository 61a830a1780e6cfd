"""The estimator: :class:`CodedALS` holds parameters, checks them, and hands a fit to a master."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp
from distributed import Client

from dask_coded_als._util import check_int
from dask_coded_als.coding import theory
from dask_coded_als.coding.codes import partition
from dask_coded_als.coding.points import POINT_FAMILIES
from dask_coded_als.data.ingest import check_ids, is_dataframe, ratings_from_dataframe
from dask_coded_als.engine.cluster import cluster_for
from dask_coded_als.engine.master import Master, Settings
from dask_coded_als.engine.schemes import is_source
from dask_coded_als.engine.stragglers import STRAGGLER_MODELS
from dask_coded_als.errors import InputError
from dask_coded_als.recsys.model import RecommenderMixin
from dask_coded_als.recsys.weighting import check_weighting, fit_weighting

__all__ = ["CodedALS", "DTYPES", "MODES", "PROTOCOLS", "default_n_factors"]

MODES = ("coded", "uncoded", "replication")
PROTOCOLS = ("fast", "paper")
DTYPES = ("float64", "float32")
#: The largest d that ``n_factors=None`` chooses.
MAX_DEFAULT_FACTORS = 150


def default_n_factors(m: int, n: int) -> int:
    """The d that ``n_factors=None`` takes for an m x n R: ``round(sqrt(min(m, n)))``, at most
    :data:`MAX_DEFAULT_FACTORS` (see :class:`CodedALS` for why).

    Examples
    --------
    >>> default_n_factors(300, 250), default_n_factors(138_493, 26_744)
    (16, 150)
    """
    return int(min(MAX_DEFAULT_FACTORS, max(1, round(math.sqrt(min(m, n))))))


class CodedALS(RecommenderMixin):
    """Coded alternating least squares on a Dask cluster, tolerant of stragglers and faults.

    Factorizes R (m x n) into U (m x d) and V (n x d) minimizing ``||R - U V^T||_F^2`` (plus an
    optional ridge term) with the one-factor ALS update of the paper, eq. (12), where the data
    matrix D = R^T R (or R R^T) is stored on the workers in coded form.

    Once fitted (or loaded from a store with :meth:`load`) it is also the model users call:
    :meth:`recommend`, :meth:`recommend_for_ratings` (fold-in of a new user), :meth:`similar_items`,
    :meth:`similar_users`, :meth:`recommend_all`, :meth:`save`
    (:mod:`dask_coded_als.recsys.model`). It follows scikit-learn's conventions: parameters are
    stored as given by ``__init__`` and checked by ``fit``, :meth:`get_params` and
    :meth:`set_params` (so ``sklearn.base.clone`` works, without depending on scikit-learn),
    ``fit`` returns the model, fitted attributes end in ``_``.

    Parameters
    ----------
    n_factors : int or None, default None
        d, the latent dimension. None takes ``round(sqrt(l))``, l = min(m, n), at most 150
        (:func:`default_n_factors`): for top-n ranking with this model (PureSVD) the best d grows
        with the data, and sqrt(l) follows the published points: Cremonesi, Koren and Turrin
        (RecSys 2010) used d = 50 on MovieLens (about 3,900 movies; sqrt: 62) and d = 150 on
        Netflix (17,770 movies; sqrt: 133). On the bundled sample (l = 250) it gives 16:
        precision@10 0.19 on a random 20% hold-out, against 0.22 at the best d (10), 0.12 for
        popularity, and 0.09 at d = 50 (an exact rank-d SVD, as the fit converges to). An
        iteration costs time linear in d (``l^2 d`` multiply-adds at the workers).
    n_workers : int, default 8
        W, workers used (the cluster must have at least this many).
    h : int or None
        The paper's h x h blocks of D, shorthand for ``partition=(h, h)``; with neither, the
        largest h that tolerates ``n_stragglers`` (:func:`dask_coded_als.coding.theory.best_h`).
    partition : (int, int), "auto" or None
        The member of the code family (see :class:`dask_coded_als.coding.codes.ALSCode`): D's output
        rows split p ways and its contraction r ways, recovery threshold ``p r + r - 1``, a
        worker's product ``l^2 d / (p r)`` multiply-adds on an operand of ``l d / r`` values.
        ``(k, 1)`` is the MDS-coded row split (least work per threshold, largest operand),
        ``(h, h)`` the paper's. ``"auto"`` measures the cluster at the start of the fit and
        takes the partition :func:`dask_coded_als.coding.theory.choose_partition` expects to be
        fastest. Coded mode only; not together with ``h``.
    n_stragglers : int, default 0
        s, how many slow or dead workers every stage must tolerate; also how many workers the
        straggler model slows down or kills.
    mode : {"coded", "uncoded", "replication"}
        ``coded``: the paper's scheme. ``uncoded``: D split by rows over all W workers, every
        iteration waits for every worker. ``replication``: D split by rows into
        ``W // (s + 1)`` blocks, each on ``s + 1`` or more workers; the first copy wins.
    protocol : {"fast", "paper"}
        How a coded iteration is spread (see :mod:`dask_coded_als.engine.schemes`). ``fast``
        (default): one exchange per iteration, the workers compute ``D~ f_R(B)`` and the master
        decodes E = D B and forms B^T B, B^T E and E G itself. ``paper``: the paper's Sec. III-C
        as written, three coded exchanges per iteration. Both give the same iterates; the
        baselines always work like ``fast``.
    straggler_model : {"none", "fixed", "random", "shifted-exponential", "kill"}
        See :class:`dask_coded_als.engine.stragglers.StragglerModel`.
    straggler_delay : float
        Seconds of delay (or mean slowdown for ``shifted-exponential``).
    points : {"circle", "real"} or None
        Evaluation points of the code. ``"circle"``: the W-th roots of unity, stable for every
        straggler pattern (a worker's product costs 1.5x the real code's multiply-adds when
        r > 1). ``"real"``: the paper's real points (1x, but exponentially ill-conditioned in the
        threshold). None (default): real points where their worst-case decoding error for this
        W and threshold is below about 2e-11 (never in float32), the circle otherwise
        (:func:`dask_coded_als.coding.points.choose_points`).
    max_iter : int, default 50
        Maximum number of updates of the factor.
    tol : float, default 1e-9
        Stop when the relative change of the objective falls below it.
    regularization : float, default 0.0
        Ridge weight on ``||U||^2 + ||V||^2``.
    seed : int or None
        Seeds the initial factor and the straggler model.
    stage_timeout : float, default 120.0
        Seconds an exchange may wait for the answers it needs before the fit stops with an
        error (an exchange that holds enough answers decodes with them instead).
    recovery_timeout : float, default 30.0
        Seconds to wait for replacement workers when fewer than the threshold are alive.
    verify : int, default 0
        e: how many wrong answers per iteration to find and leave out (the fast protocol of the
        coded mode). Each iteration then collects K + 2e answers (waiting for the 2e extra at most
        as long again as it took to get K; with fewer it checks what it has), tests that they lie
        on one polynomial, locates up to e that do not (:mod:`dask_coded_als.coding.checking`)
        and decodes without them; more wrong answers than that end the fit with a ClusterError.
        0 keeps the first K and their speed. Needs K + 2e <= n_workers.
    dtype : {"float64", "float32"}
        Precision of the shards, the operands sent and the workers' products (planes of
        complex64 values on the circle). float32 halves the workers' memory and the bytes moved
        and runs the products at single-precision speed; the master decodes and does its algebra
        in float64, and the factors agree with float64's to about the decoding's condition
        number times 6e-8 (docs/numerics.md).
    weighting : {"none", "binary", "bm25"}, default "none"
        How R is weighted before D is formed (:mod:`dask_coded_als.recsys.weighting`): ``none``
        for explicit ratings whose value says how much a user liked an item; ``binary`` (every
        stored entry is 1) for implicit feedback such as plays or clicks, or when only which
        items a user rated should count; ``bm25`` for implicit counts with a strong popularity
        bias (popular items and very active users weigh less). The coded scheme is unchanged.

    Attributes
    ----------
    user_factors_, item_factors_ : ndarray
        U (m x d) and V (n x d), fitted to the weighted R.
    n_factors_ : int
        The d used (``n_factors``, or the default it chose).
    user_ids_, item_ids_ : ndarray
        The ids of the rows of U and V (``fit``'s ``user_ids`` and ``item_ids``, by default
        0, 1, ...).
    titles_ : ndarray or None
        The items' titles, when given.
    ratings_ : scipy.sparse.csr_matrix or None
        R as given (not weighted): the items each user has seen. None after a fit on a dask
        array.
    weighting_ : Weighting
        The weighting with the statistics it took from R (bm25's item weights).
    history_ : list of dict
        One entry per round: ``iteration``, ``time``, ``objective`` (of the factor entering the
        round), ``master_seconds`` (encoding, decoding and d x d algebra at the master),
        ``decode_error`` (the relative error the round's decoding is expected to carry:
        condition number x machine epsilon of the answering workers' points),
        ``bytes_sent``, ``bytes_received``, ``cpu_seconds`` (all the workers' tasks of the
        round) and ``stages``: per exchange (``E``; with ``protocol="paper"`` also ``S`` and
        ``B`` or ``H``) its ``seconds``, the ``used`` workers, the ``late`` ones, those of them
        ``stopped`` early, the ``failed`` ones, the used workers' median ``compute`` seconds,
        ``cpu_seconds`` and ``late_cpu_seconds``. The late tasks' CPU seconds and the
        ``stopped`` lists are filled in when the fit ends.
    partition_ : (int, int) or None
        The partition (p, r) used (coded mode).
    points_ : str or None
        The evaluation points used (coded mode): ``"circle"`` or ``"real"``.
    h_ : int or None
        The paper's h when the partition is square (coded mode).
    rates_ : ClusterRates or None
        What the cluster was measured at, with ``partition="auto"``.
    n_iter_ : int
        Updates performed.
    converged_ : bool
        Whether the tolerance was reached.
    timings_ : dict
        Seconds per phase of the fit: ``gram``, ``scatter_data``, ``iterations``, ``post``,
        ``total`` (and ``recovery`` when shards were placed again).
    kills_ : list of dict
        Worker processes the ``kill`` model killed (only those seen gone).
    recoveries_ : int
        Shards placed again on other worker processes.
    wrong_answers_ : dict
        With ``verify``: worker index -> rounds in which its answer was found wrong and left
        out (a worker there more than once is likely faulty).
    workers_ : dict
        The worker address of every worker index (kept up to date during the fit).

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
        n_factors: int | None = None,
        n_workers: int = 8,
        h: int | None = None,
        n_stragglers: int = 0,
        partition: tuple[int, int] | str | None = None,
        mode: str = "coded",
        protocol: str = "fast",
        straggler_model: str = "none",
        straggler_delay: float = 0.0,
        points: str | None = None,
        max_iter: int = 50,
        tol: float = 1e-9,
        regularization: float = 0.0,
        seed: int | None = None,
        stage_timeout: float = 120.0,
        recovery_timeout: float = 30.0,
        verify: int = 0,
        dtype: str = "float64",
        weighting: str = "none",
    ):
        self.n_factors = n_factors
        self.n_workers = n_workers
        self.h = h
        self.n_stragglers = n_stragglers
        self.partition = partition
        self.mode = mode
        self.protocol = protocol
        self.straggler_model = straggler_model
        self.straggler_delay = straggler_delay
        self.points = points
        self.max_iter = max_iter
        self.tol = tol
        self.regularization = regularization
        self.seed = seed
        self.stage_timeout = stage_timeout
        self.recovery_timeout = recovery_timeout
        self.verify = verify
        self.dtype = dtype
        self.weighting = weighting

    # -- parameters (scikit-learn's protocol) -----------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        return [name for name in inspect.signature(cls.__init__).parameters if name != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The parameters given to ``__init__`` (``deep`` is accepted for scikit-learn; there are
        no nested estimators).

        Examples
        --------
        >>> CodedALS(n_factors=8).get_params()["n_factors"]
        8
        """
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> CodedALS:
        """Set parameters by name (checked by the next ``fit``); returns the model.

        Examples
        --------
        >>> CodedALS().set_params(weighting="bm25", n_factors=32).weighting
        'bm25'
        """
        names = self._param_names()
        for name, value in params.items():
            if name not in names:
                raise InputError(f"CodedALS has no parameter {name!r}; its parameters: {names}")
            setattr(self, name, value)
        return self

    # -- validation -------------------------------------------------------------------------
    def _settings(self, shape: tuple[int, int]) -> Settings:
        """The parameters checked against the data's shape; resolves the partition."""
        m, n = shape
        d = default_n_factors(m, n) if self.n_factors is None else self.n_factors
        check_int(d, "n_factors", 1)
        if d > min(m, n):
            raise InputError(f"n_factors={d} exceeds min(m, n) = {min(m, n)} of the {m} x {n} data")
        check_weighting(self.weighting)
        check_int(self.n_workers, "n_workers", 1)
        check_int(self.n_stragglers, "n_stragglers", 0)
        if self.n_stragglers >= self.n_workers:
            raise InputError(
                f"n_stragglers={self.n_stragglers} must be smaller than n_workers={self.n_workers}"
            )
        check_int(self.max_iter, "max_iter", 0)
        check_int(self.verify, "verify", 0)
        for name, choices in (
            ("mode", MODES),
            ("protocol", PROTOCOLS),
            ("straggler_model", STRAGGLER_MODELS),
        ):
            if getattr(self, name) not in choices:
                raise InputError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        if self.dtype not in DTYPES:
            raise InputError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.points is not None and self.points not in POINT_FAMILIES:
            raise InputError(f"points must be one of {POINT_FAMILIES} or None, got {self.points!r}")
        for name in (
            "tol",
            "regularization",
            "straggler_delay",
            "stage_timeout",
            "recovery_timeout",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
                raise InputError(f"{name} must be a finite number, got {value!r}")
            if not np.isfinite(value):
                raise InputError(f"{name} must be a finite number, got {value!r}")
            if value < 0:
                raise InputError(f"{name} must be >= 0, got {value}")
        partition = self._partition() if self.mode == "coded" else None
        if self.verify:
            self._check_verify(partition)
        return Settings(
            n_factors=int(d),
            n_workers=int(self.n_workers),
            partition=partition,
            n_stragglers=int(self.n_stragglers),
            verify=int(self.verify),
            mode=self.mode,
            protocol=self.protocol,
            straggler_model=self.straggler_model,
            straggler_delay=float(self.straggler_delay),
            points=self.points,
            max_iter=int(self.max_iter),
            tol=float(self.tol),
            regularization=float(self.regularization),
            seed=self.seed,
            stage_timeout=float(self.stage_timeout),
            recovery_timeout=float(self.recovery_timeout),
            dtype=self.dtype,
        )

    def _check_verify(self, partition: tuple[int, int] | str | None) -> None:
        if self.mode != "coded" or self.protocol != "fast":
            raise InputError(
                f"verify={self.verify} needs mode='coded' and protocol='fast' (the answers that "
                f"are checked are those of the coded product)"
            )
        if partition == "auto":
            raise InputError(f"verify={self.verify} needs a partition, not partition='auto'")
        K = theory.partition_threshold(*partition)
        if K + 2 * self.verify > self.n_workers:
            raise InputError(
                f"verify={self.verify} needs K + 2 verify = {K + 2 * self.verify} answers but "
                f"n_workers={self.n_workers} (K = {K}; a smaller h or partition lowers K)"
            )

    def _partition(self) -> tuple[int, int] | str:
        if self.h is not None and self.partition is not None:
            raise InputError("give h or partition, not both (h=H means partition=(H, H))")
        if self.partition == "auto":
            return "auto"
        try:
            largest = theory.best_h(self.n_workers, self.n_stragglers)
        except ValueError as exc:
            if self.h is None and self.partition is None:
                raise InputError(str(exc)) from None
            largest = None
        if self.h is None and self.partition is None:
            return (largest, largest)
        if self.partition is not None:
            try:
                p, r = partition(self.partition)
            except ValueError as exc:
                raise InputError(f"partition must be 'auto' or a pair (p, r): {exc}") from None
            what = f"partition=({p}, {r})"
        else:
            check_int(self.h, "h", 1)
            p = r = int(self.h)
            what = f"h={self.h}"
        threshold = theory.partition_threshold(p, r)
        if threshold + self.n_stragglers > self.n_workers:
            raise InputError(
                f"{what} needs {threshold} answering workers; with "
                f"n_stragglers={self.n_stragglers} that is {threshold + self.n_stragglers} > "
                f"n_workers={self.n_workers} (largest h possible: {largest})"
            )
        return p, r

    # -- public API ---------------------------------------------------------------------------
    def fit(
        self,
        R: Any,
        client: Client | None = None,
        gram: Any = None,
        callback: Callable[[dict], None] | None = None,
        checkpoint: Callable[[dict], None] | None = None,
        resume: dict | None = None,
        progress: Callable[[int, int], None] | None = None,
        *,
        user_ids: Any = None,
        item_ids: Any = None,
        titles: Any = None,
    ) -> CodedALS:
        """Factorize R (weighted as ``weighting`` says).

        Parameters
        ----------
        R : ndarray, scipy.sparse matrix, dask array, shape (m, n), or DataFrame
            Ratings; missing entries are 0. A pandas or dask DataFrame holds one rating per
            row, in columns named as a ratings file's header names them (``userId``,
            ``user_id``, ``item``, ``movieId``, ``rating``, ...) or, with 3 or 4 columns, in
            that order; its user and item ids become ``user_ids_`` and ``item_ids_``
            (:func:`dask_coded_als.data.ingest.ratings_from_dataframe`).
        client : distributed.Client or None
            The cluster to run on. None starts a LocalCluster of ``n_workers`` processes on
            127.0.0.1 and closes it afterwards.
        gram : ndarray, array-like, source or None
            D = R^T R (m >= n) or R R^T (m < n) of the weighted R, if already computed
            (:func:`dask_coded_als.data.store.compute_gram` with the weighting); otherwise it is
            computed on the cluster. An array that reads from disk on slicing (e.g. a
            ``zarr.Array``) is read block by block while the shards are placed, and again only
            to rebuild a lost worker's shard. A *source* (an object with ``shape`` and
            ``open_array()``, which returns such an array;
            :func:`dask_coded_als.data.store.gram_source`) is opened by the workers: each builds
            its own shard from it, so D never passes through this process. Workers that cannot
            open it (checked first) get their shards from this process.
        callback : callable or None
            Called with each round's history entry as soon as the round ends.
        checkpoint : callable or None
            Called after every update with the fit's state ``{"B", "iteration", "history"}``
            (B without padding); persisting it is the caller's business. An error it raises
            ends the fit.
        resume : dict or None
            A state given to ``checkpoint`` by an earlier fit with the same parameters and
            data: the fit continues from it and ends with the same factors as one run without
            interruption.
        progress : callable or None
            Called as ``progress(done, total)`` as the coded shards are placed on the workers
            (workers done of ``n_workers``), before the first round; the rounds are followed by
            ``callback``.
        user_ids, item_ids : array_like or None
            The ids of R's rows and columns (ints or strings) that the recommendation methods
            take and return; default 0, 1, ...
        titles : array_like or None
            One title per item, returned with recommendations.

        Returns
        -------
        self
        """
        if is_dataframe(R):
            if user_ids is not None or item_ids is not None:
                raise InputError("a DataFrame carries its own ids: pass no user_ids or item_ids")
            R, user_ids, item_ids = ratings_from_dataframe(R)
        R = _check_data(R)
        m, n = R.shape
        settings = self._settings((m, n))
        user_ids = check_ids(user_ids, m, "user_ids")[0]
        item_ids = check_ids(item_ids, n, "item_ids")[0]
        if titles is not None and len(titles) != n:
            raise InputError(f"titles has {len(titles)} entries, expected {n}")
        weighting = fit_weighting(self.weighting, R)
        self.transposed_ = m < n
        size = min(m, n)
        if gram is not None:
            lazy = hasattr(gram, "shape") and hasattr(gram, "__getitem__")
            if not (lazy or is_source(gram)):
                gram = np.asarray(gram, dtype=np.float64)
            if tuple(gram.shape) != (size, size):
                raise InputError(f"gram has shape {gram.shape}, expected {(size, size)}")
        resume = self._check_resume(resume, size, settings.n_factors)
        self.workers_: dict[int, str] = {}
        with cluster_for(client, self.n_workers) as (active, _):
            master = Master(active, settings, callback, checkpoint, self.workers_)
            result = master.run(weighting.apply(R), gram, resume, progress)
        self.n_factors_ = settings.n_factors
        self.weighting_ = weighting
        self.user_ids_ = user_ids
        self.item_ids_ = item_ids
        self.titles_ = None if titles is None else np.asarray(titles, dtype=object)
        self.ratings_ = None if hasattr(R, "dask") else sp.csr_matrix(R)
        self.user_factors_ = result.user_factors
        self.item_factors_ = result.item_factors
        self.history_ = result.history
        self.n_iter_ = result.n_iter
        self.converged_ = result.converged
        self.timings_ = result.timings
        self.kills_ = result.kills
        self.recoveries_ = result.recoveries
        self.wrong_answers_ = result.wrong_answers
        self.partition_ = result.partition
        self.points_ = result.points
        p, r = result.partition or (None, None)
        self.h_ = p if p == r else None
        self.rates_ = result.rates
        return self

    def _check_resume(self, resume: dict | None, size: int, d: int) -> dict | None:
        if resume is None:
            return None
        try:
            B = np.asarray(resume["B"], dtype=np.float64)
            iteration = int(resume["iteration"])
            history = list(resume["history"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"the state to resume from is incomplete ({exc})") from None
        if B.shape != (size, d) or not np.all(np.isfinite(B)):
            raise InputError(
                f"the state to resume from has a factor of shape {B.shape}, expected "
                f"{(size, d)} and finite"
            )
        if not 0 <= iteration <= self.max_iter or len(history) != iteration:
            raise InputError(
                f"the state to resume from is at iteration {iteration} with {len(history)} "
                f"history entries; max_iter is {self.max_iter}"
            )
        return {"B": B, "iteration": iteration, "history": history}


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
