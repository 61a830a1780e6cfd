"""Offline evaluation of recommenders: a per-user hold-out split and top-k ranking metrics.

Protocol. :func:`train_test_split` holds out a random part of each user's ratings,
:func:`temporal_split` the newest part. A model fitted on the training matrix ranks, for every
user, all items the user did not rate in training (full ranking, no sampled negatives); the top k
are compared with the user's *relevant* test items, those with a test rating >= ``relevant``.
Only users with at least one relevant test item are evaluated, and each metric is the mean over
them (a macro average). docs/evaluation.md compares these definitions with other libraries'.

Metrics, for one user with R relevant test items and hits h_i in {0, 1} at ranks i = 1..k:

``precision@k``
    ``sum(h) / k``. With R < k the maximum is R / k.
``recall@k``
    ``sum(h) / R`` (not divided by ``min(k, R)``: with R > k the maximum is k / R).
``ndcg@k``
    Binary gains: ``DCG = sum_i h_i / log2(i + 1)``, divided by the ideal
    ``IDCG = sum_{i=1}^{min(k, R)} 1 / log2(i + 1)``. In [0, 1].
``map@k``
    Average precision ``AP = (1 / min(k, R)) * sum_i h_i * precision@i``, with
    ``precision@i = (h_1 + ... + h_i) / i``. In [0, 1].

Ties in the scores are broken by item index ascending, so the results are deterministic. Training
items are excluded from the ranking; a relevant test item that is also a training item (the
matrices of :func:`train_test_split` never overlap) can therefore never be a hit.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp

from dask_coded_als._util import check_int
from dask_coded_als.errors import InputError
from dask_coded_als.recsys.topk import top_k

__all__ = [
    "METRICS",
    "SPLITS",
    "describe_split",
    "split_ratings",
    "split_spec",
    "verdict",
    "evaluate_factors",
    "evaluate_popularity",
    "ranking_metrics",
    "temporal_split",
    "train_test_split",
]

#: Keys of the metric values in the dicts returned by the evaluation functions.
METRICS = ("precision@k", "recall@k", "ndcg@k", "map@k")

ScoreFn = Callable[[np.ndarray], np.ndarray]


def _check_sparse(matrix: Any, name: str) -> sp.csr_matrix:
    if not sp.issparse(matrix):
        raise InputError(f"{name} must be a scipy.sparse matrix, got {type(matrix).__name__}")
    if matrix.ndim != 2:
        raise InputError(f"{name} must be 2-D, got shape {matrix.shape}")
    csr = sp.csr_matrix(matrix, copy=True)
    csr.sum_duplicates()
    csr.sort_indices()
    return csr


def _check_fraction(test_fraction: Any) -> float:
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real):
        raise InputError(f"test_fraction must be a number, got {test_fraction!r}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise InputError(f"test_fraction must be in (0, 1), got {test_fraction}")
    return float(test_fraction)


def _hold_out(
    ratings_csr: sp.spmatrix | sp.sparray,
    csr: sp.csr_matrix,
    test_fraction: float,
    keys: tuple[np.ndarray, ...],
) -> tuple[sp.csr_matrix | sp.csr_array, sp.csr_matrix | sp.csr_array]:
    """Hold out, per user, the ``n_test`` stored entries that come first in ``np.lexsort(keys)``
    order (the last key is the primary one)."""
    n_users = csr.shape[0]
    counts = np.diff(csr.indptr)
    n_test = np.floor(test_fraction * counts + 0.5).astype(np.int64)
    n_test = np.where(counts >= 2, np.clip(n_test, 1, np.maximum(counts - 1, 1)), 0)

    rows = np.repeat(np.arange(n_users), counts)
    order = np.lexsort((*keys, rows))
    rank = np.empty(csr.nnz, dtype=np.int64)
    rank[order] = np.arange(csr.nnz) - csr.indptr[rows[order]]
    in_test = rank < n_test[rows]

    cls = sp.csr_array if isinstance(ratings_csr, sp.sparray) else sp.csr_matrix

    def part(mask: np.ndarray) -> sp.csr_matrix | sp.csr_array:
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows[mask], minlength=n_users))])
        return cls((csr.data[mask], csr.indices[mask], indptr), shape=csr.shape)

    return part(~in_test), part(in_test)


def train_test_split(
    ratings_csr: sp.spmatrix | sp.sparray,
    test_fraction: float = 0.2,
    seed: int | None = 0,
) -> tuple[sp.csr_matrix | sp.csr_array, sp.csr_matrix | sp.csr_array]:
    """Split the ratings per user into a training and a test matrix, at random.

    Each user with ``n_u >= 2`` ratings (stored entries) has ``floor(test_fraction * n_u + 0.5)``
    of them held out, at random, clipped to ``[1, n_u - 1]`` so that at least one is held out and
    at least one stays in training. A user with a single rating keeps it in training.

    Parameters
    ----------
    ratings_csr : scipy.sparse matrix or array
        Ratings, shape (n_users, n_items). Duplicate entries are summed first.
    test_fraction : float, default 0.2
        Fraction of each user's ratings to hold out, in (0, 1).
    seed : int or None, default 0
        Seed of :func:`numpy.random.default_rng`; the same seed gives the same split.

    Returns
    -------
    train_csr, test_csr
        CSR matrices of the input's shape (``csr_array`` for a sparse-array input, else
        ``csr_matrix``) with disjoint supports and ``train_csr + test_csr == ratings_csr``.

    Raises
    ------
    InputError
        If the input is not sparse or ``test_fraction`` is not in (0, 1).

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> train, test = train_test_split(sp.csr_matrix([[1.0, 2.0, 3.0, 4.0], [5.0, 0, 0, 0]]), 0.5)
    >>> train.getnnz(axis=1).tolist(), test.getnnz(axis=1).tolist()
    ([2, 1], [2, 0])
    """
    csr = _check_sparse(ratings_csr, "ratings_csr")
    fraction = _check_fraction(test_fraction)
    keys = np.random.default_rng(seed).random(csr.nnz)
    return _hold_out(ratings_csr, csr, fraction, (keys,))


def temporal_split(
    ratings_csr: sp.spmatrix | sp.sparray,
    timestamps: np.ndarray,
    test_fraction: float = 0.2,
) -> tuple[sp.csr_matrix | sp.csr_array, sp.csr_matrix | sp.csr_array]:
    """Split the ratings per user into a training and a test matrix, holding out the newest.

    Each user loses the same number of ratings as in :func:`train_test_split` (at least one when
    the user has two or more), but the held-out ones are the user's most recent: the model is
    asked to predict what each user rated next from what they rated before. Ratings with equal
    timestamps count the one with the larger item index as the newer, so the split is
    deterministic.

    Parameters
    ----------
    ratings_csr : scipy.sparse matrix or array
        Ratings, shape (n_users, n_items), in canonical form (sorted indices, no duplicate
        entries), as :func:`dask_coded_als.data.store.ratings_matrix` returns it.
    timestamps : array_like
        One finite number per stored entry, in the order of ``ratings_csr.data`` (the store's
        ``ratings/timestamp`` array has that order).
    test_fraction : float, default 0.2
        Fraction of each user's ratings to hold out, in (0, 1).

    Returns
    -------
    train_csr, test_csr
        As :func:`train_test_split`.

    Raises
    ------
    InputError
        If the input is not sparse or not canonical, the timestamps do not match its entries or
        are not finite, or ``test_fraction`` is not in (0, 1).

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> ratings = sp.csr_matrix([[4.0, 5.0, 3.0, 2.0]])
    >>> train, test = temporal_split(ratings, np.array([30, 10, 40, 20]), 0.5)
    >>> train.indices.tolist(), test.indices.tolist()  # items rated at times 30 and 40 held out
    ([1, 3], [0, 2])
    """
    csr = _check_sparse(ratings_csr, "ratings_csr")
    # The timestamps follow the order of the stored entries, so that order must be unambiguous.
    if ratings_csr.format != "csr" or not ratings_csr.has_canonical_format:
        raise InputError("ratings_csr must be CSR with sorted indices and no duplicate entries")
    stamps = np.asarray(timestamps)
    if stamps.shape != (csr.nnz,):
        raise InputError(
            f"timestamps has shape {stamps.shape}, expected one per rating ({csr.nnz},)"
        )
    if stamps.dtype.kind not in "iuf" or not np.all(np.isfinite(stamps)):
        raise InputError("timestamps must be finite numbers")
    fraction = _check_fraction(test_fraction)
    # Newest first: descending time, then descending item index (dense ranks of the times are
    # negated exactly, whatever their dtype).
    time_rank = np.unique(stamps, return_inverse=True)[1].reshape(-1).astype(np.int64)
    return _hold_out(ratings_csr, csr, fraction, (-csr.indices, -time_rank))


def ranking_metrics(
    score_fn: ScoreFn,
    train_csr: sp.spmatrix | sp.sparray,
    test_csr: sp.spmatrix | sp.sparray,
    k: int = 10,
    relevant: float = 4.0,
    batch_size: int = 1024,
) -> dict[str, float | int]:
    """Top-k ranking metrics of a scoring function, by full ranking over all items.

    Parameters
    ----------
    score_fn : callable
        ``score_fn(users)`` takes an int64 array of user rows and returns the scores of all items
        for those users, shape ``(len(users), n_items)``, finite. Called once per batch.
    train_csr, test_csr : scipy.sparse matrix or array
        Training and test ratings, same shape (n_users, n_items). Training items are excluded
        from each user's ranking.
    k : int, default 10
        Cut-off, >= 1.
    relevant : float, default 4.0
        A test item is relevant if its test rating is >= ``relevant``.
    batch_size : int, default 1024
        Users scored per call of ``score_fn``.

    Returns
    -------
    dict
        ``"precision@k"``, ``"recall@k"``, ``"ndcg@k"``, ``"map@k"`` (floats, means over the
        evaluated users; definitions in the module docstring), ``"k"`` and ``"n_users"``, the
        number of users with at least one relevant test item.

    Raises
    ------
    InputError
        On bad shapes or parameters, non-finite scores, or when no user has a relevant test item.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> train = sp.csr_matrix([[5.0, 0, 0]]); test = sp.csr_matrix([[0, 0, 4.0]])
    >>> scores = np.array([[9.0, 1.0, 2.0]])
    >>> m = ranking_metrics(lambda users: scores[users], train, test, k=1)
    >>> m["precision@k"], m["recall@k"], m["n_users"]
    (1.0, 1.0, 1)
    """
    train = _check_sparse(train_csr, "train_csr")
    test = _check_sparse(test_csr, "test_csr")
    if train.shape != test.shape:
        raise InputError(f"train_csr has shape {train.shape}, test_csr has shape {test.shape}")
    k = check_int(k, "k", 1)
    batch_size = check_int(batch_size, "batch_size", 1)
    if isinstance(relevant, bool) or not isinstance(relevant, numbers.Real):
        raise InputError(f"relevant must be a number, got {relevant!r}")
    if not math.isfinite(relevant):
        raise InputError(f"relevant must be finite, got {relevant}")
    if not callable(score_fn):
        raise InputError("score_fn must be callable")

    n_users, n_items = train.shape
    # Relevance from the stored test entries only (an unstored entry is no rating at all).
    relevance = sp.csr_matrix((test.data >= relevant, test.indices, test.indptr), shape=test.shape)
    relevance.eliminate_zeros()
    n_relevant_all = np.diff(relevance.indptr)
    users = np.flatnonzero(n_relevant_all > 0).astype(np.int64)
    if users.size == 0:
        raise InputError(f"no user has a test rating >= {relevant}")

    cutoff = min(k, n_items)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.concatenate([[0.0], np.cumsum(discounts)])
    totals = dict.fromkeys(METRICS, 0.0)
    for start in range(0, users.size, batch_size):
        batch = users[start : start + batch_size]
        scores = np.array(score_fn(batch), dtype=np.float64)
        if scores.shape != (batch.size, n_items):
            raise InputError(
                f"score_fn returned shape {scores.shape}, expected {(batch.size, n_items)}"
            )
        if not np.all(np.isfinite(scores)):
            raise InputError("score_fn returned NaN or infinite scores")
        seen = train[batch].tocoo()
        scores[seen.row, seen.col] = -np.inf
        top = top_k(scores, cutoff)
        hits = np.take_along_axis(relevance[batch].toarray(), top, axis=1).astype(np.float64)
        # Excluded (training) items sort last; they are never relevant-and-unseen, so never hits.
        hits[np.take_along_axis(scores, top, axis=1) == -np.inf] = 0.0
        n_rel = n_relevant_all[batch].astype(np.float64)
        n_hits = hits.sum(axis=1)
        limit = np.minimum(k, n_relevant_all[batch])
        precision_at_i = np.cumsum(hits, axis=1) / np.arange(1, cutoff + 1)
        totals["precision@k"] += float(np.sum(n_hits / k))
        totals["recall@k"] += float(np.sum(n_hits / n_rel))
        totals["ndcg@k"] += float(np.sum(hits @ discounts[:cutoff] / ideal[limit]))
        totals["map@k"] += float(np.sum(np.sum(hits * precision_at_i, axis=1) / limit))
    result: dict[str, float | int] = {name: totals[name] / users.size for name in METRICS}
    result["k"] = k
    result["n_users"] = int(users.size)
    return result


def evaluate_factors(
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    train_csr: sp.spmatrix | sp.sparray,
    test_csr: sp.spmatrix | sp.sparray,
    k: int = 10,
    relevant: float = 4.0,
    batch_size: int = 1024,
) -> dict[str, float | int]:
    """Ranking metrics of factors U, V, scoring by ``U V^T`` computed in user batches.

    Parameters
    ----------
    user_factors : numpy.ndarray
        U, shape (n_users, d).
    item_factors : numpy.ndarray
        V, shape (n_items, d).
    train_csr, test_csr, k, relevant, batch_size
        As in :func:`ranking_metrics`.

    Returns
    -------
    dict
        As :func:`ranking_metrics`.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> train = sp.csr_matrix([[5.0, 0, 0]]); test = sp.csr_matrix([[0, 0, 4.0]])
    >>> U = np.array([[1.0]]); V = np.array([[3.0], [2.0], [1.0]])
    >>> evaluate_factors(U, V, train, test, k=1)["recall@k"]
    0.0
    """
    u = np.asarray(user_factors, dtype=np.float64)
    v = np.asarray(item_factors, dtype=np.float64)
    if u.ndim != 2 or v.ndim != 2 or u.shape[1] != v.shape[1]:
        raise InputError(f"factor shapes {u.shape} and {v.shape} do not match")
    if sp.issparse(train_csr) and train_csr.shape != (u.shape[0], v.shape[0]):
        raise InputError(
            f"train_csr has shape {train_csr.shape}, expected {(u.shape[0], v.shape[0])}"
        )
    v_t = v.T.copy()
    return ranking_metrics(
        lambda users: u[users] @ v_t, train_csr, test_csr, k, relevant, batch_size
    )


def evaluate_popularity(
    train_csr: sp.spmatrix | sp.sparray,
    test_csr: sp.spmatrix | sp.sparray,
    k: int = 10,
    relevant: float = 4.0,
    batch_size: int = 1024,
) -> dict[str, float | int]:
    """Ranking metrics of the most-popular baseline.

    Every user gets the same ranking: items by their number of training ratings (stored entries),
    descending, ties by item index; the user's own training items are excluded as for a model.

    Parameters
    ----------
    train_csr, test_csr, k, relevant, batch_size
        As in :func:`ranking_metrics`.

    Returns
    -------
    dict
        As :func:`ranking_metrics`.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> train = sp.csr_matrix([[5.0, 4.0, 0], [0, 3.0, 0]])
    >>> test = sp.csr_matrix([[0, 0, 5.0], [5.0, 0, 0]])
    >>> evaluate_popularity(train, test, k=1)["precision@k"]
    1.0
    """
    train = _check_sparse(train_csr, "train_csr")
    popularity = np.bincount(train.indices, minlength=train.shape[1]).astype(np.float64)
    return ranking_metrics(
        lambda users: np.broadcast_to(popularity, (users.size, popularity.size)),
        train,
        test_csr,
        k,
        relevant,
        batch_size,
    )


# ---- splits as records, and the verdict --------------------------------------------------------

#: How ratings are held out: a random part or the newest part of each user's ratings.
SPLITS = ("random", "temporal")


def split_spec(method: str, test_fraction: float, seed: int) -> dict[str, Any]:
    """A split as recorded with factors fitted on its training part (the seed only if used).

    Examples
    --------
    >>> split_spec("random", 0.2, 0)
    {'method': 'random', 'test_fraction': 0.2, 'seed': 0}
    >>> split_spec("temporal", 0.1, 7)
    {'method': 'temporal', 'test_fraction': 0.1}
    """
    if method not in SPLITS:
        raise InputError(f"split method must be one of {SPLITS}, got {method!r}")
    spec: dict[str, Any] = {"method": method, "test_fraction": test_fraction}
    if method == "random":
        spec["seed"] = seed
    return spec


def split_ratings(
    ratings: sp.spmatrix, spec: dict[str, Any], timestamps: np.ndarray | None = None
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """The training and test matrices of a recorded split ``spec`` (checked: it may come from a
    store), with ``timestamps`` (aligned with the CSR data of ``ratings``) for a temporal one."""
    method = spec.get("method")
    if method == "temporal":
        if timestamps is None:
            raise InputError("the ratings have no timestamps, so there is no temporal split")
        return temporal_split(ratings, timestamps, spec.get("test_fraction"))
    seed = spec.get("seed")
    if method != "random" or isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"unreadable split {spec!r}")
    return train_test_split(ratings, spec.get("test_fraction"), seed)


def describe_split(spec: dict[str, Any]) -> str:
    """The split in words, e.g. ``random split (20% of each user's ratings held out, seed 0)``."""
    share = f"{spec['test_fraction']:.0%} of each user's ratings"
    if spec["method"] == "temporal":
        return f"temporal split (the newest {share} held out)"
    return f"random split ({share} held out, seed {spec['seed']})"


def verdict(model: dict[str, Any], popular: dict[str, Any], k: int) -> str:
    """One line: which ranker has the higher precision@k and NDCG@k, and by how much.

    Examples
    --------
    >>> line = verdict({"precision@k": 0.2, "ndcg@k": 0.3}, {"precision@k": 0.1, "ndcg@k": 0.2}, 10)
    >>> line.split(":")[0], line.split(", ")[1]
    ('the model beats popularity', 'NDCG@10 0.3000 vs 0.2000 (1.50x)')
    """
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
